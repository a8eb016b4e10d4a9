"""A corpus of bad inputs through download(local) -> filter -> precompute: every bad entry is
dropped or fixed with a named reason, every good entry beside them survives, nothing crashes."""

import io
import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_lora.buckets import buckets_for
from fashion_lora.captions import load_captions
from fashion_lora.errors import UserError
from fashion_lora.filtering import filter_entries, sample_and_split
from fashion_lora.images import load_rgb, prepare
from fashion_lora.sources import fetch
from tests.helpers import small_params

CAP = "The lady wears a short-sleeve red shirt with solid color patterns."
RNG = np.random.default_rng(0)


def _photo(size=(300, 440)) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def build_corpus(root: Path) -> tuple[Path, Path, dict, dict]:
    """Images + captions; returns (images dir, captions file, expected reason per name, converted)."""
    img = root / "in"
    img.mkdir()
    expect: dict[str, str | None] = {}
    for i in range(5):  # good ones
        name = f"good-id_0000000{i}-01_1_front.jpg"
        (img / name).write_bytes(_jpeg(_photo()))
        expect[name] = None
    (img / "trunc.jpg").write_bytes(_jpeg(_photo())[:500]); expect["trunc.jpg"] = "undecodable"
    (img / "zero.jpg").write_bytes(b""); expect["zero.jpg"] = "empty_file"
    (img / "text.jpg").write_text("hello"); expect["text.jpg"] = "not_an_image"
    Image.fromarray((RNG.integers(0, 65535, (440, 300))).astype(np.uint16)).save(img / "deep16.png")
    expect["deep16.png"] = "not_rgb"
    _photo().convert("CMYK").save(img / "cmyk.jpg"); expect["cmyk.jpg"] = "not_rgb"
    _photo().convert("P").save(img / "palette.png"); expect["palette.png"] = "not_rgb"
    _photo().convert("L").save(img / "gray.jpg"); expect["gray.jpg"] = "not_rgb"
    _photo().convert("RGBA").save(img / "rgba.png"); expect["rgba.png"] = "not_rgb"
    frames = [_photo() for _ in range(3)]
    frames[0].save(img / "anim.gif", save_all=True, append_images=frames[1:]); expect["anim.gif"] = "bad_format"
    Image.new("RGB", (8000, 8000)).save(img / "bomb.png"); expect["bomb.png"] = "decompression_bomb"
    rot = _photo((440, 300))  # stored landscape, displayed portrait
    exif = rot.getexif()
    exif[0x0112] = 6
    (img / "rotated.jpg").write_bytes(_jpeg(rot, exif=exif)); expect["rotated.jpg"] = None
    (img / "Dup.jpg").write_bytes(_jpeg(_photo())); expect["Dup.jpg"] = None
    (img / "dup.jpg").write_bytes(_jpeg(_photo())); expect["dup.jpg"] = "duplicate_name_case"
    for name in ("empty.jpg", "space.jpg", "number.jpg", "long.jpg", "viet.jpg", "emoji.jpg"):
        (img / name).write_bytes(_jpeg(_photo()))
    captions = {n: CAP for n in expect}
    captions.update({
        "empty.jpg": "", "space.jpg": " \n\t ", "number.jpg": 12345,
        "long.jpg": "long " * 2000, "viet.jpg": "Cô gái mặc áo sơ mi màu đỏ ngắn tay với họa tiết trơn.",
        "emoji.jpg": "A red dress 👗 with white dots ✨ and a bow.",
        "a/b.jpg": CAP, "a\\b.jpg": CAP, "..": CAP, "/etc/passwd": CAP, "../../outside.jpg": CAP,
    })
    expect.update({"empty.jpg": "caption_too_short", "space.jpg": "caption_too_short",
                   "number.jpg": "caption_not_string", "long.jpg": None, "viet.jpg": None, "emoji.jpg": None})
    cap_file = root / "captions.json"
    cap_file.write_text(json.dumps(captions, ensure_ascii=False))
    return img, cap_file, expect, {"unsafe_caption_key": 5}


def test_corpus_through_download_filter_precompute(tmp_path):
    images, cap_file, expect, extra = build_corpus(tmp_path)
    p = small_params({"data.source": "local", "data.local.images": str(images),
                      "data.local.captions": str(cap_file)})
    p = replace(p, filter=replace(p.filter, max_pixels=20_000_000))  # the 8000x8000 PNG is a bomb
    raw = tmp_path / "raw"
    raw.mkdir()
    fetch(p, raw)
    captions = load_captions(raw / "captions.json")
    kept, drops, _ = filter_entries(captions, raw / "images", p.filter)
    good = {n for n, r in expect.items() if r is None}
    assert {k["image_name"] for k in kept} == good  # every good entry survives
    want: dict[str, int] = {}
    for r in expect.values():
        if r:
            want[r] = want.get(r, 0) + 1
    want.update(extra)
    assert {k: v for k, v in drops.items() if v} == want
    by_name = {k["image_name"]: k for k in kept}
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (300, 440)
    assert by_name["viet.jpg"]["caption"].startswith("Cô gái")
    assert len(by_name["long.jpg"]["caption"]) > 9000
    # precompute prepares every kept row; the rotated photo comes out upright (portrait crop box)
    rows = sample_and_split(kept, 100, 0.2, seed=0)
    buckets = buckets_for(p.precompute, 32)
    for r in rows:
        prep = prepare(0, str(raw / "images" / r["image_name"]), p.precompute, buckets)
        assert prep.reason is None, r["image_name"]
        assert prep.pixels.shape == (prep.bucket[1], prep.bucket[0], 3)
    rotated = prepare(0, str(raw / "images/rotated.jpg"), p.precompute, buckets)
    assert rotated.orig_size == (300, 440) and rotated.bucket == (64, 96)  # upright: the portrait bucket
    assert not (tmp_path / "outside.jpg").exists()


def test_convert_policy_fixes_modes(tmp_path):
    images, cap_file, expect, _ = build_corpus(tmp_path)
    p = small_params().filter
    p = replace(p, non_rgb="convert", max_pixels=20_000_000)
    captions = json.loads(cap_file.read_text())
    kept, drops, converted = filter_entries(captions, images, p)
    names = {k["image_name"] for k in kept}
    assert {"deep16.png", "cmyk.jpg", "palette.png", "gray.jpg", "rgba.png"} <= names
    assert drops["not_rgb"] == 0 and sum(converted.values()) == 5
    deep = np.asarray(load_rgb(images / "deep16.png"))
    assert deep.dtype == np.uint8 and deep.std() > 30  # scaled from 16 bits, not clipped to white
    rgba = load_rgb(images / "rgba.png")
    assert rgba.mode == "RGB"


@pytest.mark.parametrize("content,fragment", [
    ("{broken", "not valid JSON"),
    ('["a.jpg", "b.jpg"]', "JSON object"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
])
def test_malformed_captions_file_stops_download(tmp_path, content, fragment):
    (tmp_path / "imgs").mkdir()
    cap = tmp_path / "captions.json"
    cap.write_bytes(content if isinstance(content, bytes) else content.encode())
    p = small_params({"data.source": "local", "data.local.images": str(tmp_path / "imgs"),
                      "data.local.captions": str(cap)})
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(UserError, match=fragment) as e:
        fetch(p, raw)
    assert "captions.json" in str(e.value)


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/fashion_lora_pwned",))


def test_pickle_checkpoint_is_refused_not_run(tmp_path, caplog):
    from fashion_lora.training.checkpoint import load_checkpoint

    Path("/tmp/fashion_lora_pwned").unlink(missing_ok=True)
    with open(tmp_path / "checkpoint.pt", "wb") as f:
        pickle.dump({"fingerprint": Evil()}, f)
    assert load_checkpoint(tmp_path / "checkpoint.pt", "x") is None
    assert not Path("/tmp/fashion_lora_pwned").exists()
    assert "ignoring unreadable checkpoint" in caplog.text


def test_adapters_must_be_safetensors(tmp_path):
    from fashion_lora.lora import check_lora_file

    (tmp_path / "adapter.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="safetensors"):
        check_lora_file(tmp_path / "adapter.bin")

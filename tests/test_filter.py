import io
import json

import pytest
from PIL import Image

from fashion_lora.filtering import DROP_REASONS, filter_entries, product_id, sample_and_split
from fashion_lora.images import inspect_image
from tests.helpers import small_params

CAP = "The lady wears a short-sleeve red shirt with solid color patterns."


def _jpeg(path, size=(300, 440), mode="RGB", color=(200, 30, 40)):
    Image.new(mode, size, color if mode == "RGB" else 128).save(path, format="JPEG")


@pytest.fixture
def fp():
    return small_params().filter


def test_every_rule_has_its_reason(tmp_path, fp):
    img = tmp_path / "images"
    img.mkdir()
    _jpeg(img / "good-id_00000001-01_1_front.jpg")
    _jpeg(img / "small-id_00000002-01_1_front.jpg", size=(200, 300))
    _jpeg(img / "gray-id_00000003-01_1_front.jpg", mode="L")
    data = io.BytesIO()
    Image.new("RGB", (300, 440), "red").save(data, format="JPEG")
    (img / "trunc-id_00000004-01_1_front.jpg").write_bytes(data.getvalue()[:400])
    (img / "text-id_00000005-01_1_front.jpg").write_text("not an image")
    (img / "empty-id_00000006-01_1_front.jpg").write_bytes(b"")
    Image.new("RGB", (300, 440)).save(img / "bmp-id_00000007-01_1_front.bmp")
    _jpeg(img / "nocaption-id_00000008-01_1_front.jpg")
    _jpeg(img / "short-id_00000009-01_1_front.jpg")
    captions = {
        "good-id_00000001-01_1_front.jpg": "  The lady   wears a\n red shirt.  ",
        "small-id_00000002-01_1_front.jpg": CAP,
        "gray-id_00000003-01_1_front.jpg": CAP,
        "trunc-id_00000004-01_1_front.jpg": CAP,
        "text-id_00000005-01_1_front.jpg": CAP,
        "empty-id_00000006-01_1_front.jpg": CAP,
        "bmp-id_00000007-01_1_front.bmp": CAP,
        "missing-id_00000010-01_1_front.jpg": CAP,
        "short-id_00000009-01_1_front.jpg": "A shirt.",
        "number-id_00000011-01_1_front.jpg": 42,
        "../escape.jpg": CAP,
        "sub/dir.jpg": CAP,
    }
    kept, drops, converted = filter_entries(captions, img, fp)
    assert [k["image_name"] for k in kept] == ["good-id_00000001-01_1_front.jpg"]
    assert kept[0]["caption"] == "The lady wears a red shirt."
    assert drops["too_small"] == 1 and drops["not_rgb"] == 1 and drops["undecodable"] == 1
    assert drops["not_an_image"] == 1 and drops["empty_file"] == 1 and drops["bad_format"] == 1
    assert drops["missing_image"] == 1 and drops["missing_caption"] == 1
    assert drops["caption_too_short"] == 1 and drops["caption_not_string"] == 1
    assert drops["unsafe_caption_key"] == 2
    assert set(drops) == set(DROP_REASONS)
    assert sum(drops.values()) + len(kept) == len(captions) + 1  # +1: the image without a caption


def test_convert_policy_keeps_non_rgb_and_counts_it(tmp_path, fp):
    from dataclasses import replace

    img = tmp_path / "images"
    img.mkdir()
    _jpeg(img / "gray.jpg", mode="L")
    Image.new("RGBA", (300, 440), (10, 20, 30, 100)).save(img / "alpha.png")
    kept, drops, converted = filter_entries({"gray.jpg": CAP, "alpha.png": CAP}, img, replace(fp, non_rgb="convert"))
    assert len(kept) == 2 and converted == {"L": 1, "RGBA": 1}


def test_mode_is_checked_before_conversion(tmp_path):
    Image.new("RGBA", (300, 440)).save(tmp_path / "a.png")
    assert inspect_image(tmp_path / "a.png", ["PNG"], 256, "drop", 10**8).reason == "not_rgb"


def test_decompression_bomb_refused_without_decoding(tmp_path):
    Image.new("RGB", (3000, 3000)).save(tmp_path / "big.png")
    assert inspect_image(tmp_path / "big.png", ["PNG"], 256, "drop", max_pixels=1_000_000).reason == "decompression_bomb"


def test_exif_rotation_is_honoured_for_size(tmp_path):
    img = Image.new("RGB", (440, 300), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif)
    info = inspect_image(tmp_path / "r.jpg", ["JPEG"], 256, "drop", 10**8)
    assert (info.width, info.height) == (300, 440)


def test_product_id():
    assert product_id("WOMEN-Dresses-id_00000123-02_1_front.jpg") == "id_00000123"
    assert product_id("plain.jpg") == "plain.jpg"


def _entries(n_products, views=3):
    return [{"image_name": f"WOMEN-Dresses-id_{p:08d}-0{v}_1_front.jpg", "caption": CAP}
            for p in range(n_products) for v in range(views)]


def test_split_groups_products_and_hits_fraction():
    rows = sample_and_split(_entries(100), 10_000, 0.08, seed=3)
    train = {product_id(r["image_name"]) for r in rows if r["split"] == "train"}
    val = {product_id(r["image_name"]) for r in rows if r["split"] == "val"}
    assert not train & val
    n_val = sum(r["split"] == "val" for r in rows)
    assert 0.08 * 300 <= n_val <= 0.08 * 300 + 3


def test_sampling_is_seeded_and_sized():
    a = sample_and_split(_entries(200), 50, 0.1, seed=5)
    b = sample_and_split(_entries(200), 50, 0.1, seed=5)
    c = sample_and_split(_entries(200), 50, 0.1, seed=6)
    assert a == b and len(a) == 50
    assert [r["image_name"] for r in a] != [r["image_name"] for r in c]


def test_two_products_give_both_splits():
    rows = sample_and_split(_entries(2, views=1), 100, 0.01, seed=0)
    assert {r["split"] for r in rows} == {"train", "val"}


def test_captions_read_the_same_however_they_were_saved(tmp_path, fp):
    """A byte-order mark, Windows line ends and stray spaces around a file name lose no caption."""
    from fashion_lora.captions import load_captions

    img = tmp_path / "images"
    img.mkdir()
    _jpeg(img / "a-id_00000001-01_1_front.jpg")
    _jpeg(img / "b-id_00000002-01_1_front.jpg")
    text = json.dumps({" a-id_00000001-01_1_front.jpg ": CAP, "b-id_00000002-01_1_front.jpg": CAP + "\r\n"}, indent=1)
    path = tmp_path / "captions.json"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    kept, drops, _ = filter_entries(load_captions(path), img, fp)
    assert [k["image_name"] for k in kept] == ["a-id_00000001-01_1_front.jpg", "b-id_00000002-01_1_front.jpg"]
    assert {k["caption"] for k in kept} == {CAP} and sum(drops.values()) == 0


def test_captions_json_errors_name_the_file(tmp_path):
    from fashion_lora.captions import load_captions
    from fashion_lora.errors import UserError

    bad = tmp_path / "captions.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=r"captions\.json.*not valid JSON"):
        load_captions(bad)
    bad.write_text(json.dumps(["a", "b"]))
    with pytest.raises(UserError, match="JSON object"):
        load_captions(bad)


def test_filter_stage_export_zip_and_report(tmp_path, tiny_base):
    """The filter stage end to end on synthetic data, with the optional zip export on: the report
    holds per-attribute caption-label agreement and the captions' token window."""
    import shutil
    import subprocess
    import sys
    import zipfile

    import pandas as pd
    import yaml

    from fashion_lora import embedded
    from tests.helpers import REPO, raw_params

    for d in ("stages", "fashion_lora"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(**{"filter.export_zip": True})))
    embedded.write_dataset(tmp_path / "data/raw", 40, seed=2)
    proc = subprocess.run([sys.executable, "-m", "stages.filter"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "run `dvc repro base_model`" in proc.stderr  # the tokenizer is the base's
    assert not (tmp_path / "data/fashion_data.csv").exists()  # stopped before writing anything
    (tmp_path / "models").mkdir()
    (tmp_path / "models/base").symlink_to(tiny_base)
    proc = subprocess.run([sys.executable, "-m", "stages.filter"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "kept" in proc.stderr  # the one-line summary
    df = pd.read_csv(tmp_path / "data/fashion_data.csv", keep_default_na=False)
    report = json.loads((tmp_path / "reports/filter.json").read_text())
    assert report["kept"] == len(df) and report["train"] + report["val"] == len(df)
    assert report["input_captions"] == report["passed_rules"] + sum(
        v for k, v in report["dropped"].items() if k != "missing_caption")
    agreement = {a: r["agreement"] for a, r in report["labels"]["attributes"].items() if r["compared"]}
    assert agreement and set(agreement.values()) == {1.0} and "outer_clothing" in agreement
    assert report["labels"]["attributes"]["outer_cardigan"] == {"stated": 0, "compared": 0, "agreement": None,
                                                               "na_labels": report["labels"]["from_file"]}
    tokens = json.loads((tmp_path / "reports/caption_tokens.json").read_text())
    assert tokens == report["caption_tokens"] and tokens["captions"] == len(df)
    assert tokens["max_token_length"] == 77 and tokens["over_77"] == 0 and 20 < tokens["longest"] <= 77
    with zipfile.ZipFile(tmp_path / "data/export/fashion_subset.zip") as zf:
        names = set(zf.namelist())
    assert "fashion_data.csv" in names and {f"images/{n}" for n in df.image_name} <= names

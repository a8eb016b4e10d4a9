import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from fashion_lora.archives import safe_extract
from fashion_lora.errors import UserError
from fashion_lora.sources import fetch
from tests.helpers import small_params

LIMITS = dict(max_total_bytes=10**8, max_ratio=200.0, max_entries=1000)
CAP = "The lady wears a short-sleeve T-shirt with cotton fabric and striped patterns."
SHAPE = "a-id_00000001.jpg 1 3 3 1 4 2 2 2 4 6 1 2\n"  # short-sleeve, long, hat; the rest NA


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name,why", [
    ("../evil.txt", "escapes"),
    ("a/../../evil.txt", "escapes"),
    ("/etc/evil.txt", "absolute"),
    ("C:\\evil.txt", "absolute"),
])
def test_unsafe_entries_refused_and_nothing_written(tmp_path, name, why):
    archive = _zip(tmp_path / "a.zip", {"ok.txt": b"fine", name: b"evil"})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UserError, match=why) as e:
        safe_extract(archive, dest, **LIMITS)
    assert repr(name) in str(e.value) or name in str(e.value)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_entry_refused(tmp_path):
    archive = tmp_path / "l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UserError, match="symbolic link"):
        safe_extract(archive, tmp_path, **LIMITS)


def test_zip_bomb_ratio_and_total_size(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"zeros.bin": b"\0" * (20 << 20)})
    with pytest.raises(UserError, match="ratio"):
        safe_extract(archive, tmp_path, **LIMITS)
    big = _zip(tmp_path / "big.zip", {"a.bin": os.urandom(1 << 16), "b.bin": os.urandom(1 << 16)})
    with pytest.raises(UserError, match="max_total_bytes"):
        safe_extract(big, tmp_path, max_total_bytes=100_000, max_ratio=200.0, max_entries=10)


def test_nested_zip_is_not_opened(tmp_path):
    inner = _zip(tmp_path / "inner.zip", {"../escape.txt": b"x"})
    outer = _zip(tmp_path / "outer.zip", {"inner.zip": inner.read_bytes()})
    dest = tmp_path / "out"
    dest.mkdir()
    files = safe_extract(outer, dest, **LIMITS)
    assert [f.name for f in files] == ["inner.zip"]
    assert not (tmp_path / "escape.txt").exists()


def _image_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (300, 440), "red").save(buf, format="JPEG")
    return buf.getvalue()


def test_deepfashion_with_fake_gdown(tmp_path):
    """The real download path, with gdown replaced by a fake that serves local files."""
    served = {
        "IMAGES": _zip(tmp_path / "images.zip", {"images/a-id_00000001.jpg": _image_bytes(),
                                                  "images/b-id_00000002.jpg": _image_bytes()}),
        "CAPTIONS": _zip(tmp_path / "captions.zip", {"captions.json": json.dumps(
            {"a-id_00000001.jpg": CAP, "b-id_00000002.jpg": CAP}).encode()}),
        # the data set's labels folder as zipped on its Drive: the files under labels/
        "LABELS": _zip(tmp_path / "labels.zip", {"labels/shape/shape_anno_all.txt": SHAPE.encode(),
                                                  "labels/texture/pattern_ann.txt": b"a-id_00000001.jpg 2 3 7\n",
                                                  "labels/texture/fabric_ann.txt": b"a-id_00000001.jpg 1 0 7\n",
                                                  "labels/readme.txt": b"not a label file"}),
    }
    calls = []

    def fake_gdown(file_id: str, output: Path) -> None:
        calls.append(file_id)
        shutil.copyfile(served[file_id], output)

    from dataclasses import replace

    p = small_params({"data.source": "deepfashion"})
    p = replace(p, data=replace(p.data, deepfashion=replace(p.data.deepfashion, images_id="IMAGES",
                                                           captions_id="CAPTIONS", labels_id="LABELS")))
    stage = tmp_path / "raw"
    stage.mkdir()
    info = fetch(p, stage, downloader=fake_gdown, downloads=tmp_path / "downloads")
    assert calls == ["CAPTIONS", "LABELS", "IMAGES"]  # the small files first
    from fashion_lora.labels import read_labels

    row = read_labels(stage / "labels")["a-id_00000001.jpg"]  # in the data set's layout under data/raw/labels
    assert (row["sleeve_length"], row["hat"], row["upper_pattern"], row["lower_fabric"]) == \
        ("short-sleeve", "yes", "striped", "denim")
    assert info["label_files"] == 3 and len(info["labels_sha256"]) == 64
    assert sorted(f.name for f in (stage / "images").iterdir()) == ["a-id_00000001.jpg", "b-id_00000002.jpg"]
    assert json.loads((stage / "captions.json").read_text())["a-id_00000001.jpg"] == CAP
    assert info["images"] == 2 and len(info["images_sha256"]) == 64


def test_deepfashion_checksum_mismatch_fails(tmp_path):
    from dataclasses import replace

    p = small_params({"data.source": "deepfashion"})
    p = replace(p, data=replace(p.data, deepfashion=replace(p.data.deepfashion, images_sha256="0" * 64)))
    stage = tmp_path / "raw"
    stage.mkdir()
    with pytest.raises(UserError, match="sha256"):
        fetch(p, stage, downloader=lambda fid, out: out.write_bytes(b"PK..."), downloads=tmp_path / "dl")


def test_local_folder_and_zip(tmp_path):
    from dataclasses import replace

    src = tmp_path / "mine"
    src.mkdir()
    (src / "a.jpg").write_bytes(_image_bytes())
    os.symlink("/etc/passwd", src / "link.jpg")
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"a.jpg": CAP}))
    p = small_params({"data.source": "local", "data.local.images": str(src), "data.local.captions": str(caps)})
    stage = tmp_path / "raw"
    stage.mkdir()
    fetch(p, stage)
    assert [f.name for f in (stage / "images").iterdir()] == ["a.jpg"]  # the link was not followed
    zipped = _zip(tmp_path / "imgs.zip", {"x/a.jpg": _image_bytes()})
    p2 = replace(p, data=replace(p.data, local=replace(p.data.local, images=str(zipped))))
    stage2 = tmp_path / "raw2"
    stage2.mkdir()
    assert fetch(p2, stage2)["images"] == 1


def test_local_labels_folder_is_optional_and_checked(tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    (src / "a.jpg").write_bytes(_image_bytes())
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"a.jpg": CAP}))
    labels = tmp_path / "my_labels"
    (labels / "deep/er").mkdir(parents=True)
    (labels / "deep/er/shape_anno_all.txt").write_text(SHAPE.replace("a-id_00000001.jpg", "a.jpg"))
    keys = {"data.source": "local", "data.local.images": str(src), "data.local.captions": str(caps)}
    stage = tmp_path / "raw"
    stage.mkdir()
    assert "label_files" not in fetch(small_params(keys), stage)  # none given: captions only
    assert not (stage / "labels").exists()
    stage2 = tmp_path / "raw2"
    stage2.mkdir()
    assert fetch(small_params({**keys, "data.local.labels": str(labels)}), stage2)["label_files"] == 1
    assert (stage2 / "labels/shape/shape_anno_all.txt").read_text().startswith("a.jpg 1 3")
    (labels / "deep/er/shape_anno_all.txt").write_text("a.jpg 1 3 3\n")  # 3 codes, not 12
    with pytest.raises(UserError, match=r"shape_anno_all.txt, line 1: expected an image name and 12 codes"):
        fetch(small_params({**keys, "data.local.labels": str(labels)}), tmp_path / "raw3")
    with pytest.raises(UserError, match="data.local.labels.*does not exist"):
        fetch(small_params({**keys, "data.local.labels": str(tmp_path / "nope")}), tmp_path / "raw4")
    (labels / "deep/er/shape_anno_all.txt").unlink()
    with pytest.raises(UserError, match="none of the label files"):
        fetch(small_params({**keys, "data.local.labels": str(labels)}), tmp_path / "raw5")


def test_local_missing_path(tmp_path):
    p = small_params({"data.source": "local", "data.local.images": str(tmp_path / "nope"),
                      "data.local.captions": str(tmp_path / "c.json")})
    with pytest.raises(UserError, match="data.local.images.*does not exist"):
        fetch(p, tmp_path)

"""DeepFashion's download against Google Drive's failures (issue 36): fakes that fail at each point."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from fashion_lora.downloads import CHECKSUMS, classify, fetch_file, gdown_download
from fashion_lora.errors import UserError
from fashion_lora.sources import fetch
from tests.helpers import small_params

QUOTA = ("Too many users have viewed or downloaded this file recently. Please try accessing the file "
         "again later.")
GDOWN_EITHER = ("Cannot retrieve the public link of the file. You may need to change the permission to "
                "'Anyone with the link', or have had many accesses.")
CAP = "The lady wears a short-sleeve T-shirt with cotton fabric and striped patterns."


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


class FakeDrive:
    """Serves local files like gdown: a partial `<name>XXXXXXXX.part` beside the output while it
    runs, the output only when complete, resuming a partial left by an earlier call."""

    def __init__(self, served: dict[str, Path]):
        self.served, self.calls, self.resumed = served, [], {}
        self.fail: dict[str, Exception] = {}  # file id -> the error the next call raises
        self.cut_after: dict[str, int] = {}  # file id -> bytes written before the next call fails

    def __call__(self, file_id: str, output: Path) -> None:
        self.calls.append(file_id)
        if file_id in self.fail:
            raise self.fail.pop(file_id)
        data = self.served[file_id].read_bytes()
        parts = list(output.parent.glob(output.name + "????????.part"))
        part = parts[0] if parts else output.with_name(output.name + "abcdefgh.part")
        have = part.stat().st_size if part.exists() else 0
        if have:
            self.resumed[file_id] = have
        if file_id in self.cut_after:
            part.write_bytes(data[:self.cut_after.pop(file_id)])
            raise ConnectionError("Connection reset by peer")
        with open(part, "ab") as f:
            f.write(data[have:])
        part.rename(output)


@pytest.fixture
def drive(tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (300, 440), "red").save(buf, format="JPEG")
    served = {
        "IMAGES": _zip(tmp_path / "images.zip", {f"images/a-id_0000000{i}.jpg": buf.getvalue() for i in range(4)}),
        "CAPTIONS": tmp_path / "captions.json",
        "LABELS": _zip(tmp_path / "labels.zip", {"labels/shape/shape_anno_all.txt":
                                                  b"a-id_00000001.jpg 1 3 3 1 4 2 2 2 4 6 1 2\n"}),
    }
    served["CAPTIONS"].write_text(json.dumps({f"a-id_0000000{i}.jpg": CAP for i in range(4)}))
    return FakeDrive(served)


def _params():
    return small_params({"data.source": "deepfashion", "data.deepfashion.images_id": "IMAGES",
                         "data.deepfashion.captions_id": "CAPTIONS", "data.deepfashion.labels_id": "LABELS"})


def _run(tmp_path, drive):
    stage = tmp_path / "raw"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return fetch(_params(), stage, downloader=drive, downloads=tmp_path / "downloads")


@pytest.mark.parametrize("fails,error,says", [
    ("CAPTIONS", RuntimeError(QUOTA), "download quota for this file is used up"),
    ("LABELS", RuntimeError(GDOWN_EITHER), "quota for this file is used up, or the file is not shared"),
    ("IMAGES", RuntimeError("403 Forbidden: access denied"), "not shared with 'Anyone with the link'"),
    ("IMAGES", ConnectionError("Name or service not known"), "a network error"),
])
def test_a_failure_at_each_point_is_named_and_keeps_what_was_fetched(tmp_path, drive, fails, error, says):
    drive.fail[fails] = error
    with pytest.raises(UserError) as e:
        _run(tmp_path, drive)
    msg = str(e.value)
    assert says in msg and f"id {fails}" in msg and "data.source: local" in msg and "rerun" in msg.lower()
    order = ["CAPTIONS", "LABELS", "IMAGES"]
    assert drive.calls == order[:order.index(fails) + 1]  # the small files first
    kept = sorted(f.name for f in (tmp_path / "downloads").iterdir())
    assert kept == sorted([CHECKSUMS] * (fails != "CAPTIONS") + [f"{k.lower()}-{k}.{'download' if k == 'CAPTIONS' else 'zip'}"
                                                                 for k in order[:order.index(fails)]])
    drive.calls.clear()
    info = _run(tmp_path, drive)  # the rerun fetches only what is missing
    assert drive.calls == order[order.index(fails):]
    assert info["images"] == 4 and info["captions"] == 4 and info["label_files"] == 1


def test_the_archive_resumes_from_its_partial_file(tmp_path, drive):
    size = drive.served["IMAGES"].stat().st_size
    drive.cut_after["IMAGES"] = size // 2
    with pytest.raises(UserError, match="network error"):
        _run(tmp_path, drive)
    parts = list((tmp_path / "downloads").glob("images-IMAGES.zip*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == size // 2  # a failure never deletes it
    info = _run(tmp_path, drive)
    assert drive.resumed == {"IMAGES": size // 2}
    recorded = json.loads((tmp_path / "downloads" / CHECKSUMS).read_text())
    assert recorded["images-IMAGES.zip"] == info["images_sha256"]
    assert set(recorded) == {"captions-CAPTIONS.download", "labels-LABELS.zip", "images-IMAGES.zip"}


def test_a_kept_file_that_changed_is_an_error_not_a_silent_download(tmp_path, drive):
    _run(tmp_path, drive)
    kept = tmp_path / "downloads" / "captions-CAPTIONS.download"
    kept.write_text(kept.read_text().replace("striped", "lattice"))
    drive.calls.clear()
    with pytest.raises(UserError, match="recorded when it was downloaded.*delete the file"):
        _run(tmp_path, drive)
    assert drive.calls == [] and kept.exists()


def test_a_pinned_checksum_is_checked_and_a_mismatch_keeps_the_file(tmp_path, drive):
    folder = tmp_path / "downloads"
    with pytest.raises(UserError, match="does not match data.deepfashion.captions_sha256=0{64}"):
        fetch_file("the captions", "CAPTIONS", "c.json", "0" * 64, "data.deepfashion.captions_sha256", folder, drive)
    assert (folder / "c.json").exists() and not (folder / CHECKSUMS).exists()  # never recorded as good


def test_gdown_is_asked_to_resume_into_the_downloads_folder(tmp_path, monkeypatch):
    import gdown

    seen = {}

    def fake(**kw):
        seen.update(kw)
        Path(kw["output"]).write_bytes(b"x")
        return kw["output"]

    monkeypatch.setattr(gdown, "download", fake)
    gdown_download("abc", tmp_path / "f.zip")
    assert seen["resume"] is True and seen["id"] == "abc" and seen["output"] == str(tmp_path / "f.zip")


def test_offline_gdown_fails_with_clear_message(tmp_path, monkeypatch):
    import gdown

    def no_network(**kw):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(gdown, "download", no_network)
    with pytest.raises(UserError, match="network error.*data.source: local"):
        fetch_file("the captions", "abc", "c.json", None, "k", tmp_path, gdown_download)


def test_classify():
    assert classify(RuntimeError(QUOTA)) == "quota"
    assert classify(RuntimeError(GDOWN_EITHER)) == "quota or permission"
    assert classify(RuntimeError("HTTP Error 403: Forbidden")) == "permission"
    assert classify(TimeoutError("timed out")) == "network"

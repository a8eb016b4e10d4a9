"""Google Drive downloads that survive Google Drive: small files first, a persistent folder, resume.

DeepFashion-MultiModal lives on Google Drive, whose usual failure is not the network but its
per-file download quota ("Too many users have viewed or downloaded this file recently"). So the
download stage fetches the captions and labels (MBs) before the 5.4 GB image archive, keeps every
file it fetched in `data/downloads/` (ignored by git, not a DVC out, never deleted by a failure),
lets gdown resume its partial file there on a rerun, and records each file's sha256 the first time
it completes, so that a file kept from an earlier run is checked before it is used again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from .errors import UserError, human_bytes
from .files import file_sha256, write_json

log = logging.getLogger(__name__)

# downloader(file_id, output): writes `output` only once it is complete, resuming a partial file of
# its own beside it (gdown's `<name>XXXXXXXX.part`); raises on failure. Tests pass fakes.
Downloader = Callable[[str, Path], None]
CHECKSUMS = "checksums.json"  # {file name: sha256} of the completed files in the folder

# Google Drive's quota page ("Too many users have viewed or downloaded this file recently") and
# gdown's message when Drive answers with a page instead of the file: that covers a quota used up
# as well as a file that is not shared ("...change the permission ... or have had many accesses").
_QUOTA = ("too many users", "quota", "rate limit", "429")
_EITHER = ("many accesses",)
_PERMISSION = ("permission", "anyone with the link", "access denied", "403", "404", "not found")


def gdown_download(file_id: str, output: Path) -> None:
    """Fetch a Google Drive file with gdown into `output`, resuming gdown's partial file there."""
    import gdown

    result = gdown.download(id=file_id, output=str(output), quiet=False, resume=True)
    if result is None or not output.is_file():
        raise RuntimeError(f"gdown returned no file for Google Drive id {file_id}")


def classify(error: BaseException) -> str:
    """'quota', 'quota or permission', 'permission' or 'network', from what Drive/gdown said."""
    text = str(error).lower()
    if any(w in text for w in _QUOTA):
        return "quota"
    if any(w in text for w in _EITHER):
        return "quota or permission"
    if any(w in text for w in _PERMISSION):
        return "permission"
    return "network"


def _refused(what: str, file_id: str, folder: Path, error: BaseException) -> UserError:
    kind = classify(error)
    said = " ".join(str(error).split())[:300]
    kept = (f"what was already fetched stays in {folder} and a rerun of `dvc repro` uses it "
            "(a partial archive resumes)")
    local = ("or download it in a browser (https://drive.google.com/uc?id=" + file_id + ") and set "
             "data.source: local with data.local.images, data.local.captions and data.local.labels")
    if kind == "network":
        return UserError(f"could not download {what} (Google Drive id {file_id}): a network error "
                         f"({type(error).__name__}: {said}). Rerun when the network is back: {kept}; "
                         f"without network, {local.removeprefix('or ')}")
    why = {"quota": "its download quota for this file is used up",
           "quota or permission": "its download quota for this file is used up, or the file is not "
                                  "shared with 'Anyone with the link'",
           "permission": "the file is not shared with 'Anyone with the link' (or the id in "
                         "data.deepfashion is wrong)"}[kind]
    wait = "Wait (Drive's quota resets within 24 hours) and rerun" if kind != "permission" else "Check the id and rerun"
    return UserError(f"Google Drive refused {what} (id {file_id}): {why} (it said: {said}). "
                     f"{wait}: {kept}; {local}")


def _records(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUMS
    return json.loads(path.read_text()) if path.is_file() else {}


def fetch_file(what: str, file_id: str, name: str, expected: str | None, key: str, folder: Path,
               downloader: Downloader) -> tuple[Path, str]:
    """Return (path, sha256) of `folder/name`, downloading it unless a complete copy is there.

    A file kept from an earlier run must match the checksum recorded when it completed (and
    `expected`, where the params pin one); a mismatch is an error naming the file, never a
    silent re-download of gigabytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    recorded = _records(folder).get(name)
    if path.is_file():
        log.info("%s: using %s from an earlier download (checking its sha256)", what, path)
    else:
        log.info("downloading %s (Google Drive id %s) into %s", what, file_id, folder)
        try:
            downloader(file_id, path)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:  # gdown raises many unrelated types; Drive's answer is in the text
            raise _refused(what, file_id, folder, e) from None
        recorded = None  # a fresh file: nothing recorded for it yet
    digest = file_sha256(path)
    if recorded and digest != recorded:
        raise UserError(f"{path}: sha256 {digest} differs from the {recorded} recorded when it was "
                        f"downloaded (in {folder / CHECKSUMS}); delete the file to fetch it again")
    if expected and digest != expected.lower():
        raise UserError(f"{path}: sha256 {digest} does not match {key}={expected}; the download is "
                        "corrupt or the file changed upstream: delete the file to fetch it again, or "
                        f"correct {key}")
    if not recorded:
        write_json(folder / CHECKSUMS, {**_records(folder), name: digest})
        log.info("%s: %s, sha256 %s (pin it with %s)", what, human_bytes(path.stat().st_size), digest, key)
    return path, digest

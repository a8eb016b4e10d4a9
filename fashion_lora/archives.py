"""Safe zip extraction: no path escapes, no links, bounded size and compression ratio."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import UserError

CHUNK = 1 << 20
RATIO_MIN_BYTES = 1 << 20  # tiny entries (a blank text file) may compress absurdly well: fine


def _refuse(archive: Path, name: str, why: str) -> UserError:
    return UserError(f"{archive}: entry {name!r} refused: {why}; nothing was extracted")


def check_member(archive: Path, info: zipfile.ZipInfo, max_ratio: float) -> None:
    """Raise if one entry could write outside the target, is a link, or looks like a bomb."""
    name = info.filename
    if "\x00" in name:
        raise _refuse(archive, name, "NUL byte in name")
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or win.is_absolute() or win.drive or name.startswith(("/", "\\")):
        raise _refuse(archive, name, "absolute path")
    if ".." in posix.parts or ".." in win.parts:
        raise _refuse(archive, name, "path escapes the target folder ('..')")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _refuse(archive, name, "symbolic link")
    ftype = stat.S_IFMT(mode)  # 0 when the archiver stored permission bits only
    if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(archive, name, "not a regular file or folder")
    if info.file_size >= RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
        raise _refuse(archive, name, f"compression ratio {info.file_size / max(info.compress_size, 1):.0f} "
                                     f"exceeds data.archive.max_ratio={max_ratio:g} (zip bomb?)")


def safe_extract(archive: Path, dest: Path, max_total_bytes: int, max_ratio: float,
                 max_entries: int) -> list[Path]:
    """Extract `archive` into `dest` (which must exist) and return the regular files written.

    Every entry is checked before anything is written; sizes are counted on the bytes actually
    inflated, so a header that lies about its size cannot get past the limit. Nested archives
    are written as plain files, never opened.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise UserError(f"{archive}: {len(infos)} entries exceed data.archive.max_entries={max_entries}")
        declared = 0
        for info in infos:
            check_member(archive, info, max_ratio)
            declared += info.file_size
        if declared > max_total_bytes:
            raise UserError(f"{archive}: unpacks to {declared} bytes, over "
                            f"data.archive.max_total_bytes={max_total_bytes}")
        root = dest.resolve()
        written: list[Path] = []
        total = 0
        for info in infos:
            target = (root / info.filename).resolve()
            if root != target and root not in target.parents:
                raise _refuse(archive, info.filename, "resolves outside the target folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                size = 0
                while block := src.read(CHUNK):
                    size += len(block)
                    total += len(block)
                    if size > info.file_size or total > max_total_bytes:
                        raise _refuse(archive, info.filename, "inflates past its declared size or "
                                                              "data.archive.max_total_bytes")
                    dst.write(block)
            written.append(target)
        return written


def flatten_into(files: list[Path], dest: Path) -> int:
    """Move extracted files into `dest` by base name (DeepFashion captions key on base names)."""
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for f in files:
        if f.name in seen:
            raise UserError(f"two archive entries share the file name {f.name!r}; "
                            "captions are keyed by file name, so this is ambiguous")
        seen.add(f.name)
        shutil.move(str(f), dest / f.name)
    return len(seen)

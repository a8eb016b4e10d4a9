"""Atomic writes: every output file or folder is the previous complete one or the new complete one,
never half (a crash or Ctrl-C leaves a `.tmp` the next run removes); a full disk is one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFull, is_disk_full


def _tmp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = _tmp_beside(path)
    except OSError as e:
        raise DiskFull.from_error(e, path) if is_disk_full(e) else e from None
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull.from_error(e, path) from None  # named by its destination, not the temp file
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through a buffer: the archive's inner folder is then always 'archive', not the
    random temp name, so equal tensors give byte-identical files (DVC hashes stay stable)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def canonicalize_safetensors(path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Rewrite a .safetensors header with sorted keys (and `metadata` added to its own).

    The Rust writer stores `__metadata__` from a hash map, so two saves of equal tensors can
    differ in header order; sorting makes equal adapters byte-identical. Tensor offsets are
    relative to the data section, so only the header is rewritten.
    """
    import struct

    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    if metadata:
        header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    atomic_write_bytes(path, struct.pack("<Q", len(text)) + text + raw[8 + n:])


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp dir beside `path`; on success it replaces `path` whole.

    A crash leaves the old `path` (or none) plus a `.tmp` dir that the next run removes; a full
    disk inside the block (any writer: save_pretrained, PIL) becomes a `DiskFull` naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull.from_error(e, path) from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

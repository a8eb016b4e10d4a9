"""The errors a user can act on: one clear line each (a bad input, Ctrl-C, a full disk naming the
free space left), and the free-space helpers those lines need."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(RuntimeError):
    """A problem the user can fix (bad input, missing file, wrong setting): one clear line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the one line that says where the stage stopped and how to go on."""


class DiskFull(UserError):
    """A write ran out of disk space (ENOSPC) or quota (EDQUOT): one line naming the file, the
    free space left there and the way out."""

    @classmethod
    def from_error(cls, error: OSError, path: str | Path) -> DiskFull:
        target = Path(error.filename) if isinstance(error.filename, str) else Path(path)
        return cls(f"disk full: writing {target} failed ({error.strerror or os.strerror(error.errno)}; "
                   f"{human_bytes(free_bytes(target))} free on that filesystem). Free space there, point DVC's cache "
                   "elsewhere (`dvc cache dir /bigger/disk`) or drop unused cache entries (`dvc gc -w`), then run the "
                   "same command again; the previous outputs are still in DVC's cache and `dvc checkout` restores them")


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def existing_parent(path: str | Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (the filesystem it would be on)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would hold it)."""
    return shutil.disk_usage(existing_parent(path)).free


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"

"""Small shared helpers: logging, torch settings and seeding, device choice, atomic file writes,
stage entry."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from .params import Params

log = logging.getLogger("fashion_lora")


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


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # Libraries we drive are chatty at INFO; keep their warnings.
    for name in ("diffusers", "transformers", "accelerate", "peft", "PIL", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # per-file "Loading weights" bars
    with contextlib.suppress(ImportError):
        import diffusers

        diffusers.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(): user-fixable errors become one log line and exit code 2."""
    from .params import ParamError

    setup_logging()
    try:
        main()
    except (ParamError, UserError) as e:
        log.error("%s", e)
        sys.exit(2)
    except OSError as e:
        if not is_disk_full(e):
            raise
        log.error("%s", DiskFull.from_error(e, Path.cwd()))  # a full disk outside the atomic writers
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback, the shell's exit code for SIGINT
        log.error("%s", str(e) or "interrupted; outputs are written atomically, so each is the previous "
                  "complete one or absent. Run the same `dvc repro` / `dvc exp run` command again to finish")
        sys.exit(130)


def configure_torch(params: Params, stage: str) -> None:
    """Every process-wide torch setting a stage needs, from the params it already loaded, in one
    place: CPU threads, seeds, and for training TF32 and dynamo's compile limit.

    `cpu_threads`: CPU float results (and so DVC's hashes) depend on the thread count, not on
    the machine's load (measured), so a fixed count reproduces on the same CPU family.
    """
    import torch

    if params.cpu_threads is not None:
        torch.set_num_threads(params.cpu_threads)
    set_seed(params.seed)
    if stage != "train":
        return
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # Ampere+: TF32 matmuls for the fp32 parts
        torch.backends.cudnn.allow_tf32 = True
    if params.train.compile != "none":
        raise_recompile_limit()


def raise_recompile_limit(limit: int = 64) -> None:
    """SD1.5 has more distinct block shapes than dynamo's default of 8 compiled versions per
    function (`train.compile`)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; both exist in some versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))


def ignore_sigint() -> None:
    """Pool-worker initializer: Ctrl-C reaches the whole process group, and only the parent
    should answer it (workers would each print a KeyboardInterrupt traceback)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Explicit generators are used where it matters."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix_seed(seed: int, offset: int) -> int:
    """A reproducible seed derived from the run's `seed` and an `offset` (a step, a stream, an
    item): the one mixing rule, so streams of one run never share seeds by accident."""
    return (seed * 1_000_003 + offset) % (2**63 - 1)


def resolve_device(name: str, key: str) -> torch.device:
    """Map a device param (`auto` | `cpu` | `cuda`) to a torch.device; `key` names the param."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{key} is 'cuda' but no CUDA GPU is available to torch "
                            f"(torch {torch.__version__}); set {key}: cpu or auto")
        return torch.device("cuda")
    raise UserError(f"{key} must be auto, cpu or cuda, got {name!r}")


def worker_count(workers: int | str) -> int:
    """A `workers` param: a process count, or `auto` = this machine's cores."""
    return (os.cpu_count() or 1) if workers == "auto" else int(workers)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a host tensor to `device` without making the host wait for the GPU: a pinned,
    non-blocking copy on CUDA (a plain `.to` blocks until the GPU has finished all queued work)."""
    if device.type != "cuda" or x.device.type == "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


# ----------------------------------------------------------------------------- atomic writes
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

"""Where and how torch computes: process-wide torch settings, the device params, host-to-device
copies and worker counts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import UserError
from .seeds import set_seed

if TYPE_CHECKING:
    import torch

    from .params import Params


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

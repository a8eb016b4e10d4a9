"""Drawing with a loaded pipeline, set up once for generate, evaluate and the CLI: the image size,
the weights' precision, the LoRA fused or not, and CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import torch

from .latents import INDEX, LatentsError, read_index
from .lora import lora_components
from .precision import inference_dtype
from .sampling import use_cuda_graphs


def image_size(height: int | str, width: int | str, latent_dir: Path) -> tuple[int, int]:
    """(height, width) to generate at: the numbers given, `auto` = the most common train bucket
    recorded in the latent index."""
    if height != "auto" and width != "auto":
        return int(height), int(width)
    hint = "or give the size (generate.height/width; --height/--width on the CLI)"
    try:
        meta = read_index(latent_dir)["meta"]
    except LatentsError as e:
        raise LatentsError(f"height/width auto: {e}, {hint}") from None
    if "train_bucket" not in meta:
        raise LatentsError(f"height/width auto: {latent_dir / INDEX} has no train bucket (made by an older "
                           f"precompute); rerun `dvc repro precompute`, {hint}")
    w, h = meta["train_bucket"]
    return (h if height == "auto" else int(height)), (w if width == "auto" else int(width))


def prepare_inference(pipe, device: torch.device, precision: str, key: str, *, cuda_graphs: bool,
                      fuse: bool = False) -> torch.dtype:
    """Put a pipeline from `lora.load_pipeline` (already on `device`, in eval mode) in its drawing
    form: weights in the dtype of `precision` (`key` names the param in errors), the LoRA merged
    in for good when `fuse` (the CLI; the stages fuse per block with `sampling.lora_enabled`, so
    their base images come first), and on CUDA the UNet replayed as CUDA graphs (after the dtype
    change: the graphs hold the weights' memory). Returns the dtype."""
    dtype = inference_dtype(precision, device, key)
    pipe.to(dtype=dtype)
    if fuse:
        pipe.fuse_lora(components=lora_components(pipe), lora_scale=1.0)
    if cuda_graphs and device.type == "cuda":
        use_cuda_graphs(pipe.unet)
    return dtype

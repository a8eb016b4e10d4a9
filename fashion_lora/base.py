"""The base model as the stages use it: frozen components loaded from the `models/base` folder.

All later stages load the base only from the folder that the base_model stage writes with
`save_pretrained` (see `provision`), so a hub model is fetched once and tracked by DVC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell: 2 per VAE down block after the first (8 for SD, as diffusers'
    `pipe.vae_scale_factor`), read from the config so it holds for any VAE."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def model_step(vae, unet) -> int:
    """Pixels per bucket side step of a loaded base (see `buckets.size_step`)."""
    from .buckets import size_step

    return size_step(vae_scale_factor(vae), unet.config.block_out_channels)


def check_base_dir(path: Path) -> None:
    """Stop with the fix named when `path` is not the diffusers folder the base_model stage writes."""
    if not (path / "model_index.json").is_file():
        raise UserError(f"{path} is not a base model folder (no model_index.json); run `dvc repro base_model`")


def load_tokenizer(path: Path):
    """The base's tokenizer from its folder (`models/base/tokenizer`)."""
    from transformers import CLIPTokenizer

    check_base_dir(path.parent)
    return CLIPTokenizer.from_pretrained(path)


@dataclass
class Base:
    """The frozen parts of the base model plus the training noise scheduler."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any


def load_base(path: Path, device: torch.device, dtype: torch.dtype = torch.float32,
              with_vae: bool = True) -> Base:
    """Load the base components from a `save_pretrained` folder, frozen and in eval mode."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = load_tokenizer(path / "tokenizer")
    kw = dict(dtype=dtype, use_safetensors=True)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw).to(device)
    unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw).to(device)
    vae = AutoencoderKL.from_pretrained(path / "vae", **kw).to(device) if with_vae else None
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    for m in (text_encoder, unet, vae):
        if m is not None:
            m.requires_grad_(False)
            m.eval()
    return Base(tokenizer, text_encoder, vae, unet, scheduler)

"""Provisioning of the base model named by `model.base`: which kind it is, and writing it into
`models/base` (the tiny one's pretraining is in `pretrain`)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from .base import vae_scale_factor
from .base_id import LEGACY_IDS, classify_base
from .errors import UserError
from .folders import save_pipeline
from .tiny import build_tiny

log = logging.getLogger(__name__)


def _pipeline_from(source: str):
    from diffusers import StableDiffusionPipeline

    # Never trust_remote_code; safety checker not needed for training or offline evaluation.
    return StableDiffusionPipeline.from_pretrained(source, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False, trust_remote_code=False)


def provision_base(base: str, seed: int, out_dir: Path) -> dict:
    """Write the base model named by `model.base` into `out_dir` (a diffusers folder).

    `tiny-random` is the tiny architecture at its random init (fast tests of the mechanics);
    `tiny`, the same pretrained, is written by `pretrain.provision_tiny`.
    """
    kind = classify_base(base)
    if kind == "tiny":
        raise ValueError("model.base: tiny is pretrained by fashion_lora.pretrain.provision_tiny")
    if kind == "tiny-random":
        with tempfile.TemporaryDirectory() as work:  # the tokenizer's source files; saved with the pipeline
            pipe = build_tiny(seed, Path(work))
    elif kind == "local":
        pipe = _pipeline_from(str(Path(base).expanduser()))
    elif kind == "hub":
        if base in LEGACY_IDS:
            log.warning("model.base %s was taken down; using the maintained copy %s", base, LEGACY_IDS[base])
            base = LEGACY_IDS[base]
        try:
            pipe = _pipeline_from(base)
        except (OSError, ValueError) as e:
            raise UserError(f"model.base: could not load {base!r} from the Hugging Face hub ({e}). Offline, "
                            "download it on a machine with network, copy the diffusers folder here and "
                            "set model.base to that folder's path") from None
    else:
        raise AssertionError(kind)
    save_pipeline(pipe, out_dir)
    return base_info(pipe, base, kind)


def base_info(pipe, base: str, kind: str) -> dict:
    """What reports/base_model.json records about any base."""
    return {"base": base, "kind": kind, "unet_params": sum(q.numel() for q in pipe.unet.parameters()),
            "latent_factor": vae_scale_factor(pipe.vae)}

"""Base model: tiny (built offline) / hub id / local folder, provisioning and frozen loading.

All later stages load the base only from the `models/base` folder that the base_model stage
writes with `save_pretrained`, so a hub model is fetched once and tracked by DVC.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .utils import UserError

log = logging.getLogger(__name__)

LEGACY_IDS = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
# SD1.x noise schedule: shared by the tiny model so the same training code serves both.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                   beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
                   clip_sample=False, prediction_type="epsilon")


# ----------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level mapping: every byte to a printable unicode character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def build_clip_tokenizer(out_dir: Path):
    """The real CLIP BPE tokenizer, built offline from the `openai-clip` package's vocabulary.

    `openai-clip` ships `bpe_simple_vocab_16e6.txt.gz`; we write vocab.json/merges.txt from it
    (without importing clip, which needs torchvision) and load them with CLIPTokenizer.
    """
    from transformers import CLIPTokenizer

    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the 'openai-clip' package is not installed; it provides the CLIP vocabulary "
                        "for model.base: tiny (pip install --no-deps openai-clip==1.0.1)")
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + \
        ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer.from_pretrained(out_dir, model_max_length=77, pad_token="<|endoftext|>")


# ----------------------------------------------------------------------------- base models
def build_tiny(seed: int, workdir: Path, prediction_type: str = "epsilon"):
    """A small SD-shaped pipeline (every LoRA target present), randomly initialised from `seed`.

    The VAE keeps SD's shape (4 latent channels, 8x downsampling) with narrow blocks: on 2 CPU
    cores (8, 16, 32, 32) reached 21 dB in two minutes of pretraining where (16, 32, 64, 64)
    reached 19 dB in the same time.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer(workdir / "tokenizer-src")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=16, cross_attention_dim=64,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 32, 32), sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    schedule = {**{k: v for k, v in SD_SCHEDULE.items() if k != "clip_sample"}, "prediction_type": prediction_type}
    scheduler = PNDMScheduler(skip_prk_steps=True, **schedule)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sd15_unet_config() -> dict:
    """The Stable Diffusion v1.5 UNet architecture (for random-weight tests and benchmarks)."""
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def build_sd15_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**sd15_unet_config())


def build_sd15_random(seed: int, workdir: Path):
    """The whole SD1.5 architecture (UNet, VAE, 12-layer CLIP text model, scheduler) at random
    weights: the real shapes and speed where the weights cannot be downloaded (benchmarks)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = build_sd15_unet(seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = PNDMScheduler(skip_prk_steps=True, **{k: v for k, v in SD_SCHEDULE.items() if k != "clip_sample"})
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(workdir / "tok"),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


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
    local = Path(base).expanduser()
    if base == "tiny":
        raise ValueError("model.base: tiny is pretrained by fashion_lora.pretrain.provision_tiny")
    if base == "tiny-random":
        with tempfile.TemporaryDirectory() as work:  # the tokenizer's source files; saved with the pipeline
            pipe = build_tiny(seed, Path(work))
        kind = base
    elif local.exists():
        if not (local / "model_index.json").is_file():
            raise UserError(f"model.base: {local} is not a diffusers folder (no model_index.json); "
                            "save one with StableDiffusionPipeline.save_pretrained")
        pipe = _pipeline_from(str(local))
        kind = "local"
    elif base.startswith(("/", ".", "~")) or base.count("/") != 1:
        raise UserError(f"model.base: {base!r} is neither 'tiny', 'tiny-random', an existing folder, nor a hub id "
                        "like 'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    else:
        if base in LEGACY_IDS:
            log.warning("model.base %s was taken down; using the maintained copy %s", base, LEGACY_IDS[base])
            base = LEGACY_IDS[base]
        try:
            pipe = _pipeline_from(base)
        except (OSError, ValueError) as e:
            raise UserError(f"model.base: could not load {base!r} from the Hugging Face hub ({e}). Offline, "
                            "download it on a machine with network, copy the diffusers folder here and "
                            "set model.base to that folder's path") from None
        kind = "hub"
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return base_info(pipe, base, kind)


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell: 2 per VAE down block after the first (8 for SD, as diffusers'
    `pipe.vae_scale_factor`), read from the config so it holds for any VAE."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def model_step(vae, unet) -> int:
    """Pixels per bucket side step of a loaded base (see `buckets.size_step`)."""
    from .buckets import size_step

    return size_step(vae_scale_factor(vae), unet.config.block_out_channels)


def base_info(pipe, base: str, kind: str) -> dict:
    """What reports/base_model.json records about any base."""
    return {"base": base, "kind": kind, "unet_params": sum(q.numel() for q in pipe.unet.parameters()),
            "latent_factor": vae_scale_factor(pipe.vae)}


def check_base_dir(path: Path) -> None:
    """Stop with the fix named when `path` is not the diffusers folder the base_model stage writes."""
    if not (path / "model_index.json").is_file():
        raise UserError(f"{path} is not a base model folder (no model_index.json); run `dvc repro base_model`")


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
    from transformers import CLIPTextModel, CLIPTokenizer

    check_base_dir(path)
    kw = dict(dtype=dtype, use_safetensors=True)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw).to(device)
    unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw).to(device)
    vae = AutoencoderKL.from_pretrained(path / "vae", **kw).to(device) if with_vae else None
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    for m in (text_encoder, unet, vae):
        if m is not None:
            m.requires_grad_(False)
            m.eval()
    return Base(tokenizer, text_encoder, vae, unet, scheduler)

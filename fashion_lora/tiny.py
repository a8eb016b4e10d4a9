"""The tiny SD-shaped model of the embedded default: the real CLIP tokenizer built offline and
the small UNet/VAE/text encoder built deterministically from a seed (pretrained in `pretrain`)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import torch

from .errors import UserError

# SD1.x noise schedule: shared by the tiny model so the same training code serves both.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                   beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
                   clip_sample=False, prediction_type="epsilon")


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

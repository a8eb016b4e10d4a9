"""The Stable Diffusion v1.5 architecture at random weights: the real shapes and speed where
the weights cannot be downloaded. Used by benchmarks and tests only, never by a stage."""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny import SD_SCHEDULE, build_clip_tokenizer


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

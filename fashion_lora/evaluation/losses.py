"""Base vs LoRA on the held-out latents: the denoising loss on fixed noise and timesteps, overall
and per timestep band."""

from __future__ import annotations

import torch

from .. import diffusion
from ..sampling import lora_enabled
from ..val_loss import band_means, eval_losses, fixed_eval, summarize


def val_losses(pipe, latents: list[torch.Tensor], captions: list[str], repeats: int, bands: int, batch_size: int,
               seed: int, max_token_length: int = 77) -> tuple[dict, list[dict]]:
    """Base and LoRA on the same val latents (one per item, buckets may differ), noise and
    timesteps. Returns metrics and band rows."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    T = scheduler.config.num_train_timesteps
    ids, _ = diffusion.tokenize(pipe.tokenizer, captions, max_token_length)
    plan = fixed_eval([tuple(v.shape) for v in latents], repeats, T, seed)
    results = {}
    for name, enabled in (("base", False), ("lora", True)):
        with lora_enabled(pipe, enabled):
            # inside the switch: a text-encoder LoRA changes the embeddings too
            encoder_hidden_states = diffusion.encode_text(pipe.text_encoder, ids).float().cpu()
            mse, mae = eval_losses(pipe.unet, scheduler, latents, encoder_hidden_states, plan, batch_size,
                                   desc=f"val loss ({name})")
        results[name] = (mse, mae)
    metrics = {name: summarize(*results[name]) for name in results}
    base, lora = metrics["base"], metrics["lora"]
    metrics["improvement"] = {k: (base[k] - lora[k]) / base[k] if base[k] else 0.0 for k in ("mse", "mae")}
    metrics["evaluations"] = len(plan.item)
    band_rows = []
    base_b = band_means(results["base"][0], plan.timesteps, bands, T)
    lora_b = band_means(results["lora"][0], plan.timesteps, bands, T)
    for b in range(bands):
        lo, hi = b * T // bands, (b + 1) * T // bands
        band_rows.append({"timestep": (lo + hi) // 2, "band": f"{lo}-{hi - 1}",
                          "base_mse": base_b[b], "lora_mse": lora_b[b]})
    return metrics, band_rows

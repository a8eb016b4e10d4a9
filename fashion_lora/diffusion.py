"""Diffusion math shared by pretraining and fine-tuning: targets, (min-SNR weighted) loss, caption
tokens and text-encoder outputs."""

from __future__ import annotations

import torch


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps `t`."""
    a = alphas_cumprod.to(t.device)[t].float()
    return a / (1.0 - a)


def min_snr_weights(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for epsilon or v targets."""
    clipped = torch.clamp(snr_t, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr_t
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1.0)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def target_for(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def per_sample_losses(unet, scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                      encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet on noised latents; returns per-sample (MSE, MAE) in fp32, shape [b] each."""
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states).sample
    target = target_for(scheduler, latents, noise, t)
    diff = pred.float() - target.float()
    return diff.pow(2).mean(dim=(1, 2, 3)), diff.abs().mean(dim=(1, 2, 3))


def training_loss(unet, scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  encoder_hidden_states: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
    """Mean MSE on the target, optionally min-SNR weighted per sample."""
    mse, _ = per_sample_losses(unet, scheduler, latents, noise, t, encoder_hidden_states)
    if min_snr_gamma is not None:
        w = min_snr_weights(snr(scheduler.alphas_cumprod, t), min_snr_gamma,
                            scheduler.config.prediction_type)
        mse = mse * w.to(mse.device)
    return mse.mean()


@torch.no_grad()
def encode_text(text_encoder, input_ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Last hidden states of the text encoder (what SD's UNet cross-attends to), without gradients."""
    device = next(text_encoder.parameters()).device
    out = [text_encoder(input_ids[s:s + batch_size].to(device))[0] for s in range(0, len(input_ids), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def tokenize(tokenizer, captions: list[str]) -> tuple[torch.Tensor, int]:
    """Token ids padded/truncated to the tokenizer's max length; also how many were truncated."""
    max_len = tokenizer.model_max_length
    full = tokenizer(captions, truncation=False, padding=False).input_ids
    truncated = sum(len(ids) > max_len for ids in full)
    ids = tokenizer(captions, truncation=True, padding="max_length", max_length=max_len,
                    return_tensors="pt").input_ids
    return ids, truncated

"""Diffusion training math: noise, timesteps, targets, (min-SNR weighted) loss, fixed validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


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


def sample_noise(shape: torch.Size, offset: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise of `shape` (fp32, on the CPU generator's device); `offset` adds a
    per-channel constant (noise offset)."""
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if offset > 0:
        noise = noise + offset * torch.randn(shape[:2] + (1, 1), generator=gen)
    return noise


def biased_timesteps(u: torch.Tensor, num_timesteps: int, bias: float) -> torch.Tensor:
    """Timesteps from uniform `u` in [0, 1): density proportional to t^(bias - 1).

    bias 1 is the usual uniform draw; above 1 more steps land at high noise, where a prompt's
    layout and colours are decided (their loss is mostly irreducible noise, so uniform sampling
    spends little of the gradient there).
    """
    return (u.pow(1.0 / bias) * num_timesteps).long().clamp_(0, num_timesteps - 1)


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
                  encoder_hidden_states: torch.Tensor, min_snr_gamma: Optional[float]) -> torch.Tensor:
    """Mean MSE on the target, optionally min-SNR weighted per sample."""
    mse, _ = per_sample_losses(unet, scheduler, latents, noise, t, encoder_hidden_states)
    if min_snr_gamma is not None:
        w = min_snr_weights(snr(scheduler.alphas_cumprod, t), min_snr_gamma,
                            scheduler.config.prediction_type)
        mse = mse * w.to(mse.device)
    return mse.mean()


@dataclass
class FixedEval:
    """A fixed evaluation plan: which latent, which noise, which timestep, per evaluation."""

    item: torch.Tensor  # [K] int64 index into the val latents
    noise: list[torch.Tensor]  # K tensors, each the shape of its item's latent
    timesteps: torch.Tensor  # [K] int64, stratified over [0, T)


def fixed_eval(shapes: list[tuple[int, ...]], repeats: int, num_timesteps: int, seed: int,
               bias: float = 1.0) -> FixedEval:
    """Seeded plan over latents of `shapes` (one per item; buckets may differ): each latent
    `repeats` times; timesteps stratified so every band of [0, T) is hit (bias 1), or stratified
    under the training distribution of `biased_timesteps`.

    The timesteps depend only on the number of items, and evaluation k's noise only on (seed, k)
    and its latent's shape, so the same seed gives the same plan on any machine and val losses
    compare across runs and across bucket settings.
    """
    gen = torch.Generator().manual_seed(seed)
    n_items = len(shapes)
    k = n_items * repeats
    item = torch.arange(n_items).repeat(repeats)
    strata = torch.randperm(k, generator=gen)
    u = torch.rand(k, generator=gen)
    timesteps = biased_timesteps((strata.float() + u) / k, num_timesteps, bias)
    noise = [torch.randn(shapes[int(i)], generator=gen.manual_seed(seed * 1_000_003 + j + 1))
             for j, i in enumerate(item)]
    return FixedEval(item, noise, timesteps)


@torch.no_grad()
def eval_losses(unet, scheduler, latents, encoder_hidden_states: torch.Tensor, plan: FixedEval,
                batch_size: int, desc: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-evaluation (MSE, MAE) for the fixed plan, in plan order; `latents[i]` is val latent i
    ([C, h, w]; a list when buckets differ) and `encoder_hidden_states[i]` its text embedding.
    Evaluations are batched by latent shape. `desc` shows a progress bar under that name."""
    from tqdm import tqdm

    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    by_shape: dict[tuple, list[int]] = {}
    for j, i in enumerate(plan.item.tolist()):
        by_shape.setdefault(tuple(latents[i].shape), []).append(j)
    batches = [js[s:s + batch_size] for shape in sorted(by_shape) for js in [by_shape[shape]]
               for s in range(0, len(js), batch_size)]
    mse, mae = torch.empty(len(plan.item)), torch.empty(len(plan.item))
    for js in tqdm(batches, desc=desc, unit="batch", leave=False, mininterval=1.0, disable=desc is None):
        idx = plan.item[js]
        lat = torch.stack([latents[i] for i in idx.tolist()]).to(device, dtype)
        noise = torch.stack([plan.noise[j] for j in js]).to(device, dtype)
        b_mse, b_mae = per_sample_losses(unet, scheduler, lat, noise, plan.timesteps[js].to(device),
                                         encoder_hidden_states[idx].to(device, dtype))
        mse[js], mae[js] = b_mse.float().cpu(), b_mae.float().cpu()
    return mse, mae


def summarize(mse: torch.Tensor, mae: torch.Tensor) -> dict[str, float]:
    return {"mse": float(mse.mean()), "mae": float(mae.mean()), "loss_std": float(mse.std(unbiased=False))}


def band_means(values: torch.Tensor, timesteps: torch.Tensor, bands: int, num_timesteps: int) -> list[float]:
    """Mean of `values` per timestep band [k*T/bands, (k+1)*T/bands); NaN for an empty band."""
    band = (timesteps * bands // num_timesteps).clamp(max=bands - 1)
    return [float(values[band == b].mean()) if (band == b).any() else float("nan") for b in range(bands)]


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


def latent_augment(latents: torch.Tensor, gen: torch.Generator, noise_prob: float, noise_std: float,
                   hflip_prob: float, crop_prob: float, crop_min_scale: float) -> torch.Tensor:
    """Per-sample latent augmentation: horizontal flip, crop resized back, Gaussian noise.

    The draws come from the CPU generator `gen`, so a batch is the same on any device; on a
    GPU the choices travel by non-blocking copies and are applied by selection (no host sync).
    """
    from .utils import to_device

    b, _, h, w = latents.shape
    dev = latents.device
    flip = torch.rand(b, generator=gen) < hflip_prob
    out = torch.where(to_device(flip, dev).view(b, 1, 1, 1), latents.flip(-1), latents)
    crop = torch.rand(b, generator=gen) < crop_prob
    scales = crop_min_scale + (1 - crop_min_scale) * torch.rand(b, generator=gen)
    offs = torch.rand(b, 2, generator=gen)
    for i in torch.nonzero(crop).flatten().tolist():
        ch, cw = max(1, round(h * float(scales[i]))), max(1, round(w * float(scales[i])))
        top, left = int(offs[i, 0] * (h - ch + 1)), int(offs[i, 1] * (w - cw + 1))
        window = out[i:i + 1, :, top:top + ch, left:left + cw]
        out[i:i + 1] = F.interpolate(window, size=(h, w), mode="bilinear", align_corners=False)
    add = (torch.rand(b, generator=gen) < noise_prob).float().view(b, 1, 1, 1)
    if noise_std > 0:
        out = out + to_device(add, dev) * noise_std * to_device(torch.randn(out.shape, generator=gen), dev)
    return out

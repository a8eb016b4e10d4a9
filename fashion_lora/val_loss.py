"""Held-out losses on a fixed plan (the same latents, noise and timesteps every time), so the
train stage's validation and the evaluate stage compare across steps, runs and commits; and
the timestep density both draw from."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .diffusion import per_sample_losses
from .seeds import mix_seed


def biased_timesteps(u: torch.Tensor, num_timesteps: int, bias: float) -> torch.Tensor:
    """Timesteps from uniform `u` in [0, 1): density proportional to t^(bias - 1).

    bias 1 is the usual uniform draw; above 1 more steps land at high noise, where a prompt's
    layout and colours are decided (their loss is mostly irreducible noise, so uniform sampling
    spends little of the gradient there).
    """
    return (u.pow(1.0 / bias) * num_timesteps).long().clamp_(0, num_timesteps - 1)


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
    noise = [torch.randn(shapes[int(i)], generator=gen.manual_seed(mix_seed(seed, j + 1)))
             for j, i in enumerate(item)]
    return FixedEval(item, noise, timesteps)


@torch.no_grad()
def eval_losses(unet, scheduler, latents, encoder_hidden_states: torch.Tensor, plan: FixedEval,
                batch_size: int, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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

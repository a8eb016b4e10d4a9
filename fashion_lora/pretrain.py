"""Pretraining of the tiny base (`model.base: tiny`) so the offline demo draws garments.

On synthetic images of their own seed (never the fine-tuning data):
- the VAE learns to autoencode them (reconstruction from the posterior mean + a small KL);
- the UNet learns text-conditioned denoising on captions in which the words of the withheld
  attributes (`model.pretrain.withheld`, by default the upper and lower patterns) are
  replaced by one neutral word, so the base draws those garments but cannot follow their
  pattern in a prompt. That is what the LoRA has to learn from the fine-tuning captions; the
  other attributes stay known to the base, so forgetting shows.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import diffusion
from .base import model_step
from .buckets import Bucket, bucket_name, buckets_for, nearest_bucket
from .figures import render
from .folders import save_pipeline
from .images import resize_crop, to_vae_input
from .lr_schedule import lr_factor
from .params import PrecomputeParams, PretrainParams
from .provision import base_info
from .synthetic import VIEWS, Garments, caption_for, random_garments
from .tiny import build_tiny

log = logging.getLogger(__name__)


def corpus(count: int, seed: int, buckets: list[Bucket]) -> tuple[list[np.ndarray], list[Garments]]:
    """`count` synthetic images (uint8 HWC), each cropped to its nearest bucket as precompute
    does, and their garments. Same size distribution as the download stage's images."""
    rng = random.Random(seed)
    pixels, garments = [], []
    for _ in tqdm(range(count), desc="pretrain data", unit="img", mininterval=2):
        g = random_garments(rng)
        width = rng.randint(256, 320)
        img = render(g, (width, round(width * 1.47)), rng.choice(VIEWS), rng)
        pixels.append(np.asarray(resize_crop(img, nearest_bucket(*img.size, buckets), "center")[0]))
        garments.append(g)
    return pixels, garments


def by_shape(pixels: list[np.ndarray]) -> tuple[list[torch.Tensor], list[int]]:
    """Images grouped by size as float [-1, 1] NCHW tensors (groups sorted by size), and the
    image order of the groups (to put captions beside them)."""
    order = sorted(range(len(pixels)), key=lambda i: pixels[i].shape)
    groups: dict[tuple, list[int]] = {}
    for i in order:
        groups.setdefault(pixels[i].shape, []).append(i)
    return [to_vae_input([pixels[i] for i in ids]) for ids in groups.values()], order


def draw(groups: list[torch.Tensor], batch_size: int, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """A random batch from one group, the group drawn in proportion to its size: (group, rows)."""
    g = int(torch.multinomial(torch.tensor([float(len(t)) for t in groups]), 1, generator=generator)) if len(groups) > 1 else 0
    return g, torch.randint(0, len(groups[g]), (batch_size,), generator=generator)


def _cosine(opt: torch.optim.Optimizer, steps: int, warmup: int = 50) -> torch.optim.lr_scheduler.LambdaLR:
    """One cosine over all `steps`, its first `warmup` steps scaled by a linear ramp."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(k, warmup, steps, warmup_within_cosine=True))


@torch.no_grad()
def psnr(vae, groups: list[torch.Tensor], batch_size: int = 64) -> float:
    """PSNR (dB, images in [0, 1]) of decode(encode mean) against the images of `groups`."""
    vae.eval()
    se, n = 0.0, 0
    for x in groups:
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            rec = vae.decode(vae.encode(xb).latent_dist.mean).sample.clamp(-1, 1)
            se += float(((rec - xb) / 2).pow(2).sum())
        n += x.numel()
    return 10 * math.log10(1.0 / (se / n))


def train_vae(vae, groups: list[torch.Tensor], pretrain: PretrainParams, seed: int) -> float:
    """Autoencoder training; returns the last loss.

    The decoder sees the posterior mean, not a sample: with a freshly initialised log-variance
    (std ~1) sampled latents are so noisy that the decoder learns blurred, colour-averaged
    images (measured: 1.0 dB lower PSNR at equal time). Precompute stores the mean too.
    """
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=pretrain.vae_learning_rate, weight_decay=0.0)
    sched = _cosine(opt, pretrain.vae_steps)
    vae.train()
    loss = torch.tensor(0.0)
    bar = tqdm(range(pretrain.vae_steps), desc="pretrain vae", unit="step", mininterval=2)
    for _ in bar:
        g, idx = draw(groups, pretrain.vae_batch_size, generator)
        xb = groups[g][idx]
        dist = vae.encode(xb).latent_dist
        rec = vae.decode(dist.mean).sample
        kl = dist.kl().mean() / dist.mean[0].numel()  # per latent element, like the MSE per pixel
        loss = F.mse_loss(rec, xb) + pretrain.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval()
    return loss.item()


def latent_scale(std: torch.Tensor) -> float:
    """1 / std as the float32 the latents are multiplied by. Written to the VAE config as that
    float32's value: in float64, a reduction's last bit (which moves with the machine) changed the
    config's digits, and so models/base's md5, while every latent came out the same."""
    return float(torch.tensor(1.0 / float(std), dtype=torch.float32))


@torch.no_grad()
def encode_scaled(vae, groups: list[torch.Tensor], batch_size: int = 128) -> list[torch.Tensor]:
    """Posterior means per group, rescaled to unit std over all of them; the factor is stored in
    the VAE config (`scaling_factor`), where every SD pipeline reads it."""
    lats = [torch.cat([vae.encode(x[s:s + batch_size]).latent_dist.mean for s in range(0, len(x), batch_size)])
            for x in groups]
    factor = latent_scale(torch.cat([lat.flatten() for lat in lats]).std())
    vae.register_to_config(scaling_factor=factor)
    return [lat * factor for lat in lats]


def train_unet(unet, text_encoder, tokenizer, noise_scheduler, latents: list[torch.Tensor], captions: list[str],
               pretrain: PretrainParams, seed: int) -> float:
    """Text-conditioned denoiser training (all UNet weights, and the text encoder's with
    `model.pretrain.text_encoder`); returns the mean loss of the last 10% of steps. `captions`
    are in group order (group 0's images first). A frozen text encoder's outputs are computed
    once per caption; a training one runs every step, without weight decay, so the embeddings
    of words the captions never hold (the withheld ones) stay exactly as initialised."""
    ids, _ = diffusion.tokenize(tokenizer, captions + [""])
    empty_row = len(ids) - 1
    groups = [{"params": list(unet.parameters()), "weight_decay": 0.01}]
    if pretrain.text_encoder:
        text_encoder.train()
        groups.append({"params": list(text_encoder.parameters()), "weight_decay": 0.0})
        table = None
    else:
        with torch.no_grad():
            table = diffusion.encode_text(text_encoder, ids)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(groups, lr=pretrain.unet_learning_rate)
    sched = _cosine(opt, pretrain.unet_steps)
    T = noise_scheduler.config.num_train_timesteps
    unet.train()
    tail: list[float] = []
    bar = tqdm(range(pretrain.unet_steps), desc="pretrain unet", unit="step", mininterval=2)
    for step in bar:
        g, idx = draw(latents, pretrain.unet_batch_size, generator)
        rows = idx + sum(len(t) for t in latents[:g])
        rows[torch.rand(len(idx), generator=generator) < pretrain.caption_dropout] = empty_row
        e = table[rows] if table is not None else diffusion.text_hidden_states(text_encoder, ids[rows])
        z = latents[g][idx]
        flip = torch.rand(len(idx), generator=generator) < 0.5  # the figures are left/right symmetric
        z = torch.where(flip[:, None, None, None], z.flip(-1), z)
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, T, (len(idx),), generator=generator)
        loss = diffusion.training_loss(unet, noise_scheduler, z, noise, t, e, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for group in groups for q in group["params"]], 1.0)
        opt.step()
        sched.step()
        if step >= pretrain.unet_steps * 0.9:
            tail.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    unet.eval()
    text_encoder.eval()
    return float(np.mean(tail)) if tail else float("nan")


def pretrain_tiny(pipe, pretrain: PretrainParams, seed: int, buckets: list[Bucket]) -> dict:
    """Pretrain the tiny pipeline's VAE and UNet in place on images cropped to `buckets` (those
    the fine-tuning data gets); returns the report."""
    from diffusers import DDPMScheduler

    pixels, garments = corpus(pretrain.images, seed + pretrain.seed_offset, buckets)
    train_x, order = by_shape(pixels[:-pretrain.holdout])
    held_x, _ = by_shape(pixels[-pretrain.holdout:])
    withheld = frozenset(pretrain.withheld)
    base_captions = [caption_for(garments[i], withheld, pretrain.neutral_word) for i in order]
    psnr_before = psnr(pipe.vae, held_x)
    vae_loss = train_vae(pipe.vae, train_x, pretrain, seed)
    psnr_after = psnr(pipe.vae, held_x)
    log.info("VAE: held-out PSNR %.2f dB (random init %.2f dB) on %d images", psnr_after, psnr_before, pretrain.holdout)
    latents = encode_scaled(pipe.vae, train_x)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet_loss = train_unet(pipe.unet, pipe.text_encoder, pipe.tokenizer, noise_scheduler, latents, base_captions,
                           pretrain, seed)
    log.info("UNet: final training loss %.4f (%s)", unet_loss, noise_scheduler.config.prediction_type)
    return {"pretrain_images": len(order), "holdout_images": pretrain.holdout,
            "buckets": {bucket_name((t.shape[-1], t.shape[-2])): len(t) for t in train_x},
            "vae_psnr_db": round(psnr_after, 3), "vae_psnr_random_init_db": round(psnr_before, 3),
            "vae_final_loss": round(vae_loss, 5), "latent_scaling_factor": round(pipe.vae.config.scaling_factor, 6),
            "unet_final_loss": round(unet_loss, 5), "prediction_type": noise_scheduler.config.prediction_type,
            "withheld": {"attributes": sorted(withheld), "neutral_word": pretrain.neutral_word},
            "text_encoder_trained": pretrain.text_encoder}


def provision_tiny(seed: int, out_dir: Path, pretrain: PretrainParams, precompute: PrecomputeParams) -> dict:
    """Build the tiny pipeline from `seed`, pretrain it at the fine-tuning sizes (the buckets of
    `precompute`, precompute's params), save it.

    v-prediction rather than SD1.5's epsilon: its loss keeps weight on the high-noise steps
    where a prompt's garment and pattern are decided (epsilon weights them by the SNR, ~0.005 at t=999), and
    an epsilon base we trained left the colour (the attribute withheld then) to the starting noise whatever the prompt said.
    """
    with tempfile.TemporaryDirectory() as work:  # the tokenizer's source files; saved with the pipeline
        pipe = build_tiny(seed, Path(work), "v_prediction")
    report = pretrain_tiny(pipe, pretrain, seed, buckets_for(precompute, model_step(pipe.vae, pipe.unet)))
    save_pipeline(pipe, out_dir)
    return {**base_info(pipe, "tiny", "tiny"), **report}

"""Aspect-ratio buckets: the (width, height) sizes images are trained at, and which one an
image goes to.

A bucket's sides are multiples of the model's size step (pixels per latent cell x the UNet's
total downsampling), so every latent passes the UNet's down and up blocks without padding.
Sizing (`precompute.bucket_size`):
- `short_side` (default): the shorter side is `resolution`, the longer side a multiple of the
  step up to the aspect limits: SD1.5 at 512 trains 750x1101 photos at 512x768, its
  well-known portrait size; the tiny base at 64 px trains them at 64x96. A portrait costs
  ~1.5x the pixels of the square.
- `area`: about `resolution`^2 pixels per bucket (kohya's and SimpleTuner's pixel-area
  buckets), width stepped, height the largest step multiple within the area. Same compute per
  image as the square; on a coarse step (the tiny base's 32 px at 64 px) only the square fits.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .params import PrecomputeParams

log = logging.getLogger(__name__)
Bucket = tuple[int, int]  # (width, height) in pixels


def size_step(vae_scale_factor: int, unet_block_out_channels) -> int:
    """Pixels per side step: the VAE's factor x 2 per UNet down block after the first
    (8 x 8 = 64 for SD1.5, 8 x 4 = 32 for the tiny base)."""
    return vae_scale_factor * 2 ** (len(unet_block_out_channels) - 1)


def make_buckets(resolution: int, step: int, min_aspect: float, max_aspect: float,
                 sizing: Literal["short_side", "area"]) -> list[Bucket]:
    """Every bucket for `resolution` within the aspect limits, sorted (the square when the
    limits hold 1). `resolution` is rounded down to the step (at least one step)."""
    base = max(step, resolution // step * step)
    out = {(base, base)} if min_aspect <= 1 <= max_aspect else set()
    if sizing == "short_side":
        k = 1
        while True:
            long = base + k * step
            if base / long < min_aspect and long / base > max_aspect:
                break
            if base / long >= min_aspect:
                out.add((base, long))  # portrait
            if long / base <= max_aspect:
                out.add((long, base))  # landscape
            k += 1
    else:
        area = resolution * resolution
        for w in range(step, area // step + 1, step):
            h = area // w // step * step
            if h >= step and min_aspect <= w / h <= max_aspect:
                out.add((w, h))
    if not out:
        raise ValueError(f"no {sizing} bucket of step {step} px at {resolution} px has an aspect within "
                         f"[{min_aspect}, {max_aspect}]")
    return sorted(out)


def nearest_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect is nearest to the image's (in log ratio: 2:3 and 3:2 are equally
    far from 1:1); ties go to the larger area, then the first."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - aspect), 12), -b[0] * b[1]))


def bucket_name(bucket: Bucket) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def cover_box(width: int, height: int, bucket: Bucket, crop: Literal["center", "top"]
              ) -> tuple[float, tuple[int, int], tuple[int, int, int, int]]:
    """How an image of `width` x `height` covers `bucket` without squashing: the scale, the
    resized size and the crop box in resized pixels (centred, or from the top for `top`)."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    nw, nh = max(bw, round(width * scale)), max(bh, round(height * scale))
    left = (nw - bw) // 2
    top = 0 if crop == "top" else (nh - bh) // 2
    return scale, (nw, nh), (left, top, left + bw, top + bh)


def buckets_for(settings: PrecomputeParams, step: int) -> list[Bucket]:
    """The sizes images are cropped to under `settings` (precompute's params) for a model of size
    step `step`: one square (`shape: square`), or the aspect buckets."""
    if settings.shape == "square":
        return [(settings.resolution, settings.resolution)]
    if settings.resolution % step:
        log.warning("precompute.resolution %d is not a multiple of the model's size step %d px: buckets use %d",
                    settings.resolution, step, max(step, settings.resolution // step * step))
    return make_buckets(settings.resolution, step, settings.min_aspect, settings.max_aspect, settings.bucket_size)


"""The learning-rate schedule of both trainers (LoRA training and the tiny base's pretraining)."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup: int, period: int, mult: int = 1, min_ratio: float = 0.0,
              warmup_within_cosine: bool = False) -> float:
    """Multiplier of the base learning rate at optimizer step `step`.

    Cosine annealing with warm restarts (the curve of torch's CosineAnnealingWarmRestarts with
    T_0=period, T_mult=mult, eta_min=min_ratio*lr) after a linear warmup of `warmup` steps.
    The LoRA trainer runs the warmup first and starts the cosine after it; pretraining
    (`warmup_within_cosine`) scales the first `warmup` steps of the cosine itself by the ramp.
    """
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if not warmup_within_cosine and step < warmup:
        return ramp
    t = step if warmup_within_cosine else step - warmup
    if mult == 1:
        t_cur, t_i = t % period, period
    else:
        n = int(math.log(t / period * (mult - 1) + 1, mult))
        t_cur, t_i = t - period * (mult**n - 1) // (mult - 1), period * mult**n
    cosine = min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    return ramp * cosine if warmup_within_cosine else cosine

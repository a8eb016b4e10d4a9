"""Seeding: every random stream of a run derives from its `seed` param."""

from __future__ import annotations

import random

import numpy as np


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Explicit generators are used where it matters."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix_seed(seed: int, offset: int) -> int:
    """A reproducible seed derived from the run's `seed` and an `offset` (a step, a stream, an
    item): the one mixing rule, so streams of one run never share seeds by accident."""
    return (seed * 1_000_003 + offset) % (2**63 - 1)

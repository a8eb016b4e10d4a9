"""The exponential moving average of the LoRA weights (`train.ema`)."""

from __future__ import annotations

import contextlib

import torch


class LoraEMA:
    """Exponential moving average of the LoRA weights, kept beside them (fp32, same device).

    `applied()` swaps the average in for a block (validation, saving) and puts the trained
    weights back after it, so training itself never sees the average.
    """

    def __init__(self, params: list[torch.Tensor], decay: float, warmup: bool):
        self.params, self.decay, self.warmup = params, decay, warmup
        self.shadow = [p.detach().clone() for p in params]

    def decay_at(self, step: int) -> float:
        """The decay after optimizer step `step` (0-based): ramped early so the average soon
        forgets the initial (untrained) weights."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """shadow <- decay * shadow + (1 - decay) * weights, all tensors in one foreach call."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay_at(step))

    @contextlib.contextmanager
    def applied(self):
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], trained)

    def state_dict(self) -> dict:
        return {"shadow": [s.detach().cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for s, saved in zip(self.shadow, state["shadow"]):
                s.copy_(saved)

"""The state of one training run: early stopping, the validation history and best adapter, and
the `Run` object every phase of `train` works on."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..params import Params

if TYPE_CHECKING:
    from .data import Data
    from .setup import Model

CHECKPOINT = "checkpoint.pt"
FINISHED = "finished.json"  # beside the checkpoint once its run ended: its report and final curves


@dataclass
class EarlyStop:
    patience: int
    min_delta: float
    best: float = math.inf
    best_step: int = -1
    bad: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record a validation; True when it is a new best."""
        if value < self.best - self.min_delta:
            self.best, self.best_step, self.bad = value, step, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad"]


@dataclass
class Outputs:
    """Where a run writes: the adapter folder, the dvclive folder, and its private resume state."""

    lora_dir: Path
    live_dir: Path
    checkpoint_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_dir / CHECKPOINT

    @property
    def finished(self) -> Path:
        return self.checkpoint_dir / FINISHED


@dataclass
class RunState:
    early: EarlyStop
    step: int = 0
    best_lora: dict | None = None  # the best adapter's weights by component (Model.adapter_state)
    history: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """One training run: what every phase (checkpoint, validation, loop, report) works on."""

    params: Params
    model: Model
    data: Data
    state: RunState
    out: Outputs
    fingerprint: dict[str, str]  # what a checkpoint must match to be resumed (checkpoint.fingerprint)
    live: Any = None  # dvclive.Live on the main process
    on_validation: Callable[[int, dict], None] | None = None
    checkpoint_step: int | None = None  # step of the last checkpoint written or restored

    def log_step(self, step: int, **metrics: float) -> None:
        """Training curves (train/loss, train/grad_norm, train/lr) at `step`."""
        if self.live is not None:
            self.live.step = step
            for name, value in metrics.items():
                self.live.log_metric(f"train/{name}", value)

"""Started by torchrun from tests/test_multi_process.py: `train` on that test's fixtures.

argv: base dir, latent dir, output root, train overrides as JSON, scenario. Scenario `diverging`
gives each process its own validation losses (rank 0 stops early, rank 1 keeps improving), as
processes that each validate could; `plain` trains as is. Errors are the stage's one line."""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from fashion_lora.stage import run_stage
from fashion_lora.training import train, validation
from tests.helpers import outputs, train_params

LOSSES = {0: [1.0, 0.9, 0.95, 0.97, 0.99, 1.0], 1: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]}


def main() -> None:
    base, latents, out, overrides, scenario = sys.argv[1:6]
    torch.set_num_threads(1)  # two processes on two cores
    kw = json.loads(overrides)
    p = train_params(**{k: v for k, v in kw.items() if k != "patience"})
    if "patience" in kw:
        p = replace(p, train=replace(p.train, early_stopping=replace(p.train.early_stopping, patience=kw["patience"])))
    if scenario == "diverging":
        own = iter(LOSSES[int(os.environ["RANK"])])
        validation.validate = lambda *a, **k: {"mse": next(own), "mae": 0.5, "loss_std": 0.1}
    report = train(p, Path(base), Path(latents), outputs(Path(out)))
    if report:
        (Path(out) / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    run_stage(main)

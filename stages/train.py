"""train stage: data/latents + models/base -> models/lora/ (+ dvclive reports/train, reports/train_report.json).

Multi-process: `accelerate launch --multi_gpu -m stages.train` (GPUs) or
`torchrun --nproc_per_node 2 -m stages.train` (CPU, gloo).
"""

import dataclasses
import logging

from fashion_lora import paths, tokens
from fashion_lora.devices import configure_torch
from fashion_lora.disk import ensure_space
from fashion_lora.files import write_json
from fashion_lora.params import load_params
from fashion_lora.stage import run_stage
from fashion_lora.training import Outputs, train

log = logging.getLogger("stages.train")


def main() -> None:
    params = load_params()
    configure_torch(params, "train")
    # `auto`: the window filter measured; from here on the run (and the adapter's metadata) has a number
    window = tokens.resolve(params.train.max_token_length, paths.CAPTION_TOKENS)
    log.info("caption token window: %d (train.max_token_length: %s)", window, params.train.max_token_length)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, max_token_length=window))
    ensure_space(params, "models/lora", "models/checkpoints")
    out = Outputs(lora_dir=paths.LORA, live_dir=paths.TRAIN_LIVE, checkpoint_dir=paths.CHECKPOINTS)
    report = train(params, paths.BASE, paths.LATENTS, out)
    if report:  # main process only
        write_json(paths.TRAIN_REPORT, report)
        log.info("done: %d steps (%s), best val MSE %.5f at step %d (base %.5f), %.2f steps/s",
                 report["steps"], report["stop_reason"], report["best_val"]["mse"], report["best_step"],
                 report["base_val"]["mse"] if report["base_val"] else float("nan"), report["steps_per_second"])


if __name__ == "__main__":
    run_stage(main)

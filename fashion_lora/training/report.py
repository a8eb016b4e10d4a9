"""The end of a run: the adapters written to models/lora, the train report, and the replay of a
run that already finished."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..files import atomic_dir, canonicalize_safetensors
from ..lora import KOHYA_WEIGHTS, kohya_state, save_lora
from ..params import to_dict
from .checkpoint import record_finished, restore_live
from .state import Run

log = logging.getLogger(__name__)


@dataclass
class LoopResult:
    stop_reason: str  # max_steps | early_stopping
    steps_at_start: int
    seconds: float = 0.0  # the whole loop
    side_seconds: float = 0.0  # validation and checkpoints inside it: reported apart from step speed
    first_step_seconds: float = 0.0  # the first step alone (torch.compile compiles there)


def save_adapters(run: Run) -> dict:
    """models/lora: the best adapter (diffusers and kohya layouts) and the last one, each with the
    text encoder's LoRA when it trained; returns the last (by component)."""
    from safetensors.torch import save_file

    model, state = run.model, run.state
    with model.eval_weights():
        last = model.adapter_state()
    with atomic_dir(run.out.lora_dir) as tmp:  # the old adapter stays until the new one is complete
        window = run.params.train.max_token_length
        best_file = save_lora(tmp, state.best_lora or last, model.lora_configs, window)
        save_lora(tmp / "last", last, model.lora_configs, window)
        if model.lora_configs["unet"].use_dora:
            log.info("no %s: the kohya LoRA format cannot hold DoRA's magnitude vectors", KOHYA_WEIGHTS)
        else:
            kohya, meta = kohya_state(best_file)
            save_file(kohya, str(tmp / KOHYA_WEIGHTS), metadata=meta)
            canonicalize_safetensors(tmp / KOHYA_WEIGHTS)
    return last


def finish(run: Run, loop: LoopResult) -> dict:
    """Save the best and last adapters (the last step validated: `training_loop`), build the
    report, and record the finished run beside its checkpoint (so a rerun of it changes nothing)."""
    state = run.state
    last = save_adapters(run)
    report = build_report(run, loop, last)
    best = report["best_val"]
    if report["improved"] is False:
        log.warning("no validation beat the base model (best val MSE %.5f at step %d, the base's %.5f): models/lora "
                    "holds that step's adapter, which is no better than the base", best["mse"], report["best_step"],
                    report["base_val"]["mse"])
    run.live.summary = {"best_val_mse": best["mse"], "best_step": report["best_step"], "steps": state.step}
    run.live.end()
    record_finished(run, report)
    return report


def build_report(run: Run, loop: LoopResult, last: dict) -> dict:
    """What reports/train_report.json records."""
    model, data, state, train_params = run.model, run.data, run.state, run.params.train
    base_val = state.history[0] if state.history[0]["step"] == 0 else None
    # The saved adapter is the early-stopping best of the trained steps (an improvement must beat
    # min_delta); the base at step 0 is only the reference it is compared with.
    best = next(h for h in state.history if h["step"] == state.early.best_step)
    steps_run = state.step - loop.steps_at_start
    modules = {component: len({k.rsplit(".lora_", 1)[0] for k in s}) for component, s in last.items()}
    # Steady speed: without validation, checkpoints and the first step (compilation, warm-up).
    steady = loop.seconds - loop.side_seconds - loop.first_step_seconds
    return {
        "steps": state.step, "stop_reason": loop.stop_reason, "best_step": best["step"],
        "best_val": {k: best[k] for k in ("mse", "mae", "loss_std")},
        "last_val": {k: state.history[-1][k] for k in ("mse", "mae", "loss_std")},
        "base_val": {k: base_val[k] for k in ("mse", "mae", "loss_std")} if base_val else None,
        "improved": best["mse"] < base_val["mse"] if base_val else None,  # did any validation beat the base?
        "trainable_params": sum(q.numel() for q in model.lora_params),
        "unet_params": sum(q.numel() for q in model.raw_unet.parameters()),
        "lora_modules": sum(modules.values()),
        **({"text_encoder_lora_modules": modules["text_encoder"]} if "text_encoder" in modules else {}),
        # which weights were validated, selected and saved
        "weights": f"moving average (decay {train_params.ema.decay})" if model.ema is not None else "trained",
        "truncated_captions": {"train": data.batches.truncated, "val": data.val_truncated},
        "resumed_from_step": loop.steps_at_start or None,
        "seconds": round(loop.seconds, 2), "seconds_validation_and_checkpoints": round(loop.side_seconds, 2),
        "first_step_seconds": round(loop.first_step_seconds, 2),
        "steps_per_second": (round((steps_run - 1) / steady, 3) if steps_run > 1 and steady > 0
                             else round(1 / loop.first_step_seconds, 3) if steps_run else None),
        "peak_memory_mib": _peak_memory_mib(model.device), "system": model.system,
        "params": to_dict(train_params), "lr_restart_period": train_params.cosine_period,
        "val_history": state.history,
    }


def replay_finished(run: Run, record: dict) -> dict:
    """Write a finished run's adapter, curves and report again from its checkpoint (main process):
    a rerun of a completed training run gives the same files."""
    log.info("%s holds this run finished at step %d (same params, data, base and code): writing its "
             "adapter and reports again instead of training (delete the folder to train anew)",
             run.out.checkpoint_dir, run.state.step)
    save_adapters(run)
    restore_live(run.out.live_dir, record["live"])
    return record["report"]


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB

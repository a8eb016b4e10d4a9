"""The training lifecycle: setup -> resume or replay -> loop -> finish.

Every random draw of step `s` (batch order, augmentation, caption variants, noise,
timesteps) comes from generators seeded by (seed, s) and, where each process draws its own,
its rank; the checkpoint holds every process's global RNG state (LoRA dropout) too, so a
resumed run on CPU ends with the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import diffusion
from ..devices import to_device
from ..errors import DiskFull, Interrupted, UserError, is_disk_full
from ..params import Params
from ..val_loss import biased_timesteps
from .checkpoint import (
    dropout_seed,
    fingerprint,
    finished_run,
    open_live,
    restore_checkpoint,
    rng_states,
    save_checkpoint,
)
from .data import sample_noise, setup_data, step_seed
from .report import LoopResult, finish, replay_finished
from .setup import make_accelerator, setup_model
from .state import EarlyStop, Outputs, Run, RunState
from .validation import run_validation

log = logging.getLogger(__name__)
Pending = list[tuple[int, torch.Tensor, torch.Tensor, float]]  # (step, loss, grad norm, lr) not yet read


def train(params: Params, base_dir: Path, latent_dir: Path, out: Outputs,
          on_validation: Callable[[int, dict], None] | None = None) -> dict:
    """Train the LoRA; write adapter, dvclive metrics and checkpoints. Returns the report (empty
    on processes other than the main one)."""
    if not isinstance(params.train.max_token_length, int):  # the train stage resolves `auto` (tokens.resolve)
        raise ValueError(f"train.max_token_length {params.train.max_token_length!r}: resolve it before train()")
    accelerator = make_accelerator(params.train)
    if not accelerator.is_main_process:  # one voice in the logs; the main process validates for all
        logging.getLogger("fashion_lora").setLevel(logging.WARNING)
    model = setup_model(params, base_dir, accelerator)
    stopping = params.train.early_stopping
    run = Run(params=params, model=model, data=setup_data(params, model, latent_dir),
              state=RunState(early=EarlyStop(stopping.patience, stopping.min_delta)), out=out,
              fingerprint=fingerprint(params, latent_dir, base_dir, accelerator.num_processes),
              on_validation=on_validation)
    report = resume_or_replay(run)
    if report is None:
        try:
            loop = training_loop(run)
            accelerator.wait_for_everyone()
            report = finish(run, loop) if accelerator.is_main_process else {}
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(run)) from None
        except (DiskFull, OSError) as e:  # a checkpoint, the curves or the adapter hit a full disk
            if not (isinstance(e, DiskFull) or is_disk_full(e)):
                raise
            full = e if isinstance(e, DiskFull) else DiskFull.from_error(e, run.out.live_dir)
            raise DiskFull(f"{full}. {stopped_at(run)}") from None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def resume_or_replay(run: Run) -> dict | None:
    """Restore the run's checkpoint when it matches, or start fresh; open the curves and validate
    the base at step 0. A run that already finished is replayed instead: returns its report."""
    state, accelerator = run.state, run.model.accelerator
    ckpt = restore_checkpoint(run)
    if ckpt is not None and (record := finished_run(run)) is not None:
        # the same run ran to its end before: same files again, no training
        return replay_finished(run, record) if accelerator.is_main_process else {}
    if ckpt is None:
        # LoRA dropout draws from the global RNG: a fresh run starts it from the seed, each process
        # its own (a resumed one has just restored it from the checkpoint).
        torch.manual_seed(dropout_seed(run.params.seed, accelerator.process_index))
    else:
        log.info("resuming from %s at step %d (best val MSE %.5f at step %d)", run.out.checkpoint, state.step,
                 state.early.best, state.early.best_step)
    if accelerator.is_main_process:
        run.live = open_live(run.out.live_dir, run.params.train, json.loads(ckpt["live"]) if ckpt is not None else None)
    if state.step == 0 and not state.history:
        run_validation(run, 0)  # step 0 = the base model itself (LoRA B=0)
    return None


def training_loop(run: Run) -> LoopResult:
    """Optimizer steps from `run.state.step` to the end (max_steps or early stopping), with
    validation and checkpoints.

    The host never waits for the GPU inside a step: batches arrive by non-blocking copies and
    each step's loss and gradient norm stay on the device until `sync_every` steps (or a
    validation or checkpoint) are due, then are read in one go and logged step by step.
    """
    from tqdm import tqdm

    train_params, model, state = run.params.train, run.model, run.state
    result = LoopResult("max_steps", state.step)
    t_start = time.perf_counter()
    bar = tqdm(total=train_params.max_steps, initial=state.step, desc="train", unit="step",
               disable=not model.accelerator.is_main_process, mininterval=1.0)
    model.train_mode(True)
    grad_norm = torch.zeros((), device=model.device)
    pending: Pending = []
    while state.step < train_params.max_steps and not state.early.stop:
        loss, grad_norm = optimizer_step(run, state.step, grad_norm)
        state.step += 1
        pending.append((state.step, loss.detach(), grad_norm.detach(), model.lr_scheduler.get_last_lr()[0]))
        bar.update(1)
        if state.step == result.steps_at_start + 1:
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
                torch.cuda.reset_peak_memory_stats()
            result.first_step_seconds = time.perf_counter() - t_start
        due_val = state.step % train_params.val_every == 0 or state.step == train_params.max_steps
        due_checkpoint = state.step % train_params.checkpoint_every == 0
        if due_val or due_checkpoint or state.step % train_params.sync_every == 0:
            flush_step_log(run, pending, bar)  # the same steps on every process: it is a collective
        t_side = time.perf_counter()
        if due_val:
            run_validation(run, state.step)
            if state.early.stop:
                result.stop_reason = "early_stopping"
        if due_checkpoint or state.step == train_params.max_steps or state.early.stop:
            rngs = rng_states(model.accelerator)  # a collective: every process, though one saves
            if model.accelerator.is_main_process:
                save_checkpoint(run, rngs)
        result.side_seconds += time.perf_counter() - t_side
    flush_step_log(run, pending, bar)
    if state.history[-1]["step"] != state.step:  # e.g. resumed from the last checkpoint: every process, a collective
        run_validation(run, state.step)
    bar.close()
    result.seconds = time.perf_counter() - t_start
    return result


def optimizer_step(run: Run, step: int, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (its gradient-accumulation micro-batches), then EMA and LR schedule.
    Returns the last micro-batch's loss and the gradient norm (both still on the device)."""
    params, model, data = run.params, run.model, run.data
    train_params, accelerator, base = params.train, model.accelerator, model.base
    for micro in range(train_params.gradient_accumulation):
        micro_step = step * train_params.gradient_accumulation + micro
        latents, rows = data.batches.batch(micro_step)
        generator = torch.Generator().manual_seed(step_seed(params.seed, micro_step, 3 + accelerator.process_index))
        t = biased_timesteps(torch.rand(len(latents), generator=generator),
                             base.noise_scheduler.config.num_train_timesteps, train_params.timestep_bias)
        noise = sample_noise(latents.shape, train_params.noise_offset, generator)
        latents = to_device(latents, model.device).to(model.weight_dtype)
        noise, t = to_device(noise, model.device).to(model.weight_dtype), to_device(t, model.device)
        if train_params.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be reused
        with accelerator.accumulate(*[m for m in (model.unet, model.text_encoder) if m is not None]):
            with accelerator.autocast():  # (the text encoder's LoRA, when it trains, is fp32 too)
                encoder_hidden_states = data.text(rows)
                loss = diffusion.training_loss(model.unet, base.noise_scheduler, latents, noise, t,
                                               encoder_hidden_states, train_params.min_snr_gamma)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.lora_params, train_params.max_grad_norm)
            model.optimizer.step()
            model.optimizer.zero_grad(set_to_none=True)  # flush the gradients as soon as we can
    if model.ema is not None:
        model.ema.update(step)
    model.lr_scheduler.step()
    return loss, grad_norm


def flush_step_log(run: Run, pending: Pending, bar) -> None:
    """Read the pending steps' losses and gradient norms from the device (one host sync), log each
    step's values, and stop on the first non-finite loss."""
    if not pending:
        return
    losses = run.model.accelerator.reduce(torch.stack([p[1].float() for p in pending]), reduction="mean")
    values = torch.stack([losses, torch.stack([p[2].float() for p in pending])]).tolist()
    for (step, _, _, lr), loss, norm in zip(pending, *values):
        if not math.isfinite(loss):
            raise UserError(f"loss became {loss} at step {step}; lower train.learning_rate "
                            "or use train.mixed_precision: bf16/no")
        run.log_step(step, loss=loss, grad_norm=norm, lr=lr)
    bar.set_postfix(loss=f"{loss:.4f}", grad=f"{norm:.3f}", lr=f"{lr:.2e}", refresh=False)
    pending.clear()


def stopped_at(run: Run) -> str:
    """Where an interrupted run stopped and the last good checkpoint it can resume from."""
    saved = (f"last checkpoint at step {run.checkpoint_step} ({run.out.checkpoint})" if run.checkpoint_step is not None
             else "no checkpoint yet (train.checkpoint_every)")
    return f"train: stopped at step {run.state.step} of {run.params.train.max_steps}; {saved}"


def interrupted_message(run: Run) -> str:
    """The one line a Ctrl-C leaves: where it stopped and how to go on."""
    return f"{stopped_at(run)}. Run the same `dvc repro` or `dvc exp run ...` command again to resume from it"

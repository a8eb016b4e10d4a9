"""Validation during training: `validate` measures the current adapter on the fixed plan (a pure
function of the weights), `record_validation` keeps what the run needs of it (early stopping,
the best adapter, history, curves, optional samples)."""

from __future__ import annotations

import logging

import torch

from .. import diffusion
from ..params import TrainParams
from ..val_loss import eval_losses, summarize
from .data import Data
from .setup import Model
from .state import Run

log = logging.getLogger(__name__)


def validate(model: Model, data: Data, batch_size: int, desc: str | None = None) -> dict[str, float]:
    """Val MSE, MAE and loss std of the current adapter (its moving average with `train.ema`) on
    the fixed plan. Leaves the weights and train mode as they were."""
    model.train_mode(False)
    with model.eval_weights():
        with model.accelerator.autocast():  # a half-precision base with fp32 LoRA needs autocast on GPU
            encoder_hidden_states = (data.val_encoder_hidden_states if model.text_encoder is None else
                                     diffusion.encode_text(model.base.text_encoder, data.val_ids).float().cpu())
            mse, mae = eval_losses(model.raw_unet, model.base.noise_scheduler, data.val_latents,
                                   encoder_hidden_states, data.val_plan, batch_size=batch_size, desc=desc)
    model.train_mode(True)
    return summarize(mse, mae)


def record_validation(run: Run, step: int, metrics: dict[str, float]) -> None:
    """Update early stopping, keep the best adapter, render a sample when due, and log the
    metrics (history, dvclive, the log line, the `on_validation` callback). Step 0 (the untouched
    base, LoRA B = 0) is the reference, never a candidate: the adapter kept is a trained one."""
    model, state, train_params = run.model, run.state, run.params.train
    improved = step > 0 and state.early.update(metrics["mse"], step)
    if improved:
        with model.eval_weights():
            state.best_lora = model.adapter_state()
    if run.live is not None and train_params.samples.every and len(state.history) % train_params.samples.every == 0:
        log_sample(run, step)
    state.history.append({"step": step, **metrics})
    if run.live is not None:
        run.live.step = step
        for k, v in metrics.items():
            run.live.log_metric(f"val/{k}", v)
    log.info("step %d: val MSE %.5f MAE %.5f std %.5f%s", step, metrics["mse"], metrics["mae"], metrics["loss_std"],
             " (the base model: the reference)" if step == 0 else " (best)" if improved
             else f" (no improvement x{state.early.bad})")
    if run.on_validation:
        run.on_validation(step, metrics)


def run_validation(run: Run, step: int) -> None:
    """Validate at `step` (0 = the base model itself, LoRA B = 0) and record it.

    With several processes the main one validates and shares its metrics, and its stop decision
    is the one every process follows: processes that each validated and decided on their own
    could differ in the last bit of a loss, and one would leave the loop while the others wait
    for it in the next collective."""
    batch_size = max(run.params.train.batch_size, 16)
    accelerator = run.model.accelerator
    metrics = None
    if accelerator.is_main_process:
        metrics = validate(run.model, run.data, batch_size, desc="validation (base model)" if step == 0 else None)
    metrics = from_main(accelerator, metrics)
    record_validation(run, step, metrics)
    if accelerator.num_processes > 1:  # the stop decision: the main process's early-stopping state
        run.state.early.load_state_dict(from_main(accelerator, run.state.early.state_dict()))


def from_main(accelerator, value):
    """`value` as the main process has it, on every process (a broadcast; itself with one)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def log_sample(run: Run, step: int) -> None:
    """A fixed prompt and seed through the current adapter, logged as a step-numbered image."""
    model = run.model
    model.train_mode(False)
    with model.eval_weights(), model.accelerator.autocast():
        image = _render_sample(model.base, model.raw_unet, run.params.train, run.data.sample_size)
    model.train_mode(True)
    run.live.log_image(f"samples/step_{step:06d}.png", image)


def _render_sample(base, unet, train_params: TrainParams, size: tuple[int, int]):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    samples = train_params.samples
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=unet, scheduler=DDIMScheduler.from_config(base.noise_scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(samples.seed)
    return pipe(**diffusion.prompt_inputs(pipe, samples.prompt, "", train_params.max_token_length),
                num_inference_steps=samples.steps, guidance_scale=samples.guidance_scale,
                height=size[0], width=size[1], generator=generator).images[0]

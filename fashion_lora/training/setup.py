"""What a step runs on: the accelerator, the frozen base with its LoRA (UNet, and the text
encoder when it trains), AdamW and the LR schedule, and the optional compile."""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..base import Base, load_base
from ..devices import resolve_device
from ..errors import UserError
from ..lora import attach_lora, keep_lora_fp32, lora_state
from ..lr_schedule import lr_factor
from ..params import Params, TrainParams
from ..precision import dtype_of, resolve_precision
from .ema import LoraEMA

log = logging.getLogger(__name__)

# The UNet's repeated blocks: compiled one by one, each kind compiles once and is reused.
COMPILE_REGIONS = ("BasicTransformerBlock", "ResnetBlock2D")


@dataclass
class Model:
    """The accelerator, the frozen base with its LoRA, optimizer and schedule."""

    accelerator: Any
    device: torch.device
    weight_dtype: torch.dtype
    base: Base
    unet: Any  # as prepared by accelerate (wrapped in DDP when there are several processes)
    raw_unet: Any  # the plain peft UNet: validation, samples, checkpoints, saving
    lora_configs: dict[str, Any]  # peft configs by pipeline component: "unet" (+ "text_encoder")
    lora_params: list  # every trained tensor: the UNet's LoRA, then the text encoder's
    optimizer: Any  # accelerate's wrapper; `.optimizer` is the torch one
    lr_scheduler: Any
    system: dict
    ema: LoraEMA | None = None  # train.ema.enabled
    text_encoder: Any = None  # prepared by accelerate, with its LoRA (train.text_encoder_lora); None: frozen

    def eval_weights(self):
        """The weights validation, selection and saving use: the moving average when it is on."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def adapters(self) -> dict[str, Any]:
        """The plain models that carry a LoRA, by pipeline component."""
        return {"unet": self.raw_unet, **({"text_encoder": self.base.text_encoder} if self.text_encoder is not None else {})}

    def adapter_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Copies of the LoRA weights by component (what checkpoints hold and `save_lora` writes)."""
        return {component: lora_state(m) for component, m in self.adapters().items()}

    def train_mode(self, on: bool) -> None:
        """Train (LoRA dropout on) or eval mode for every model with a LoRA."""
        for m in self.adapters().values():
            m.train(on)


def make_accelerator(train_params: TrainParams):
    """accelerate's Accelerator for `train.device` and `train.mixed_precision` (auto: fp16 on CUDA,
    none on CPU)."""
    from accelerate import Accelerator

    device = resolve_device(train_params.device, "train.device")
    mixed_precision = resolve_precision(train_params.mixed_precision, device, "train.mixed_precision", full="no")
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=train_params.gradient_accumulation,
                       cpu=device.type == "cpu")


def system_check(accelerator, device: torch.device) -> dict:
    import diffusers
    import peft

    info = {"device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "peft": peft.__version__, "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision, "python": platform.python_version()}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_free_gib=round(free / 2**30, 1),
                    gpu_total_gib=round(total / 2**30, 1))
    else:
        info.update(cpu_threads=torch.get_num_threads())
    return info


def make_optimizer(params: list, train_params: TrainParams, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the LoRA params or param groups (one fused kernel on CUDA instead of several
    per tensor); `adamw8bit` uses bitsandbytes' 8-bit states (GPU memory)."""
    kw = dict(lr=train_params.learning_rate, betas=tuple(train_params.betas), weight_decay=train_params.weight_decay)
    if train_params.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw, fused=True if device.type == "cuda" else None)
    if train_params.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("train.optimizer: adamw8bit needs the bitsandbytes package (pip install "
                            "bitsandbytes; CUDA only); or set train.optimizer: adamw") from None
        return bnb.optim.AdamW8bit(params, **kw)
    raise UserError(f"train.optimizer: unknown optimizer {train_params.optimizer!r}")


def compile_unet(unet, mode: str, cuda_graphs: bool = False, backend: str = "inductor"):
    """`train.compile`: 'full' wraps the whole UNet in torch.compile; 'regional' compiles each
    transformer and resnet block in place (blocks of one shape share the compiled code, so it
    compiles faster than the full graph; peft's LoRA layers are traced inside). `cuda_graphs`
    replays each compiled graph as a CUDA graph (one launch instead of hundreds of kernels).
    Dynamo's recompile limit is raised by `devices.configure_torch` (`raise_recompile_limit`)."""
    if mode == "none":
        return unet
    kw = dict(backend=backend, mode="reduce-overhead" if cuda_graphs else None)
    if mode == "full":
        return torch.compile(unet, **kw)
    blocks = [m for m in unet.modules() if type(m).__name__ in COMPILE_REGIONS]
    for block in blocks:
        block.compile(**kw)
    log.info("compile: %d blocks (%s) compiled in place%s", len(blocks), ", ".join(COMPILE_REGIONS),
             " with CUDA graphs" if cuda_graphs else "")
    return unet


def attach_adapters(base: Base, train_params: TrainParams, seed: int, device: torch.device) -> tuple[dict, list]:
    """The UNet's LoRA, and the text encoder's when it trains: their peft configs by component and
    the optimizer's param groups. The A matrices are drawn from the global RNG (peft's init),
    seeded here for that alone and restored afterwards."""
    unet, text_lora = base.unet, train_params.text_encoder_lora
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        configs = {"unet": attach_lora(unet, train_params.lora)}
        if text_lora.enabled:  # attached after the UNet's, so the UNet's LoRA draws the same numbers either way
            configs["text_encoder"] = attach_lora(base.text_encoder, text_lora, "train.text_encoder_lora")
    groups = [{"params": _trainable(unet)}]
    n_trainable, n_total = sum(q.numel() for q in groups[0]["params"]), sum(q.numel() for q in unet.parameters())
    log.info("trainable LoRA params: %d of %d UNet params (%.2f%%)", n_trainable, n_total,
             100 * n_trainable / n_total)
    if text_lora.enabled:
        groups.append({"params": _trainable(base.text_encoder),
                       "lr": text_lora.learning_rate or train_params.learning_rate})
        log.info("text encoder LoRA: %d trainable params (lr %g)", sum(q.numel() for q in groups[1]["params"]),
                 groups[1]["lr"])
    return configs, groups


def _trainable(model) -> list:
    keep_lora_fp32(model)
    return [q for q in model.parameters() if q.requires_grad]


def setup_model(params: Params, base_dir: Path, accelerator) -> Model:
    """Frozen base in the compute dtype, LoRA params in fp32, AdamW and the LR schedule, all
    prepared by `accelerator`."""
    train_params = params.train
    device = accelerator.device
    info = system_check(accelerator, device)
    log.info("system: %s", info)
    weight_dtype = dtype_of(accelerator.mixed_precision)
    base = load_base(base_dir, device, weight_dtype, with_vae=train_params.samples.every > 0)
    configs, groups = attach_adapters(base, train_params, params.seed, device)
    unet = base.unet
    if train_params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(groups, train_params, device)
    unet = compile_unet(unet, train_params.compile, train_params.cuda_graphs)
    min_ratio = train_params.min_lr / train_params.learning_rate
    # Stepped by hand once per optimizer step (accelerate would step it once per process).
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, train_params.warmup_steps, train_params.cosine_period, train_params.restart_mult, min_ratio))
    text_encoder = None
    if "text_encoder" in configs:
        unet, text_encoder, optimizer = accelerator.prepare(unet, base.text_encoder, optimizer)
    else:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    trained = [q for g in groups for q in g["params"]]
    ema = LoraEMA(trained, train_params.ema.decay, train_params.ema.warmup) if train_params.ema.enabled else None
    return Model(accelerator=accelerator, device=device, weight_dtype=weight_dtype, base=base, unet=unet,
                 raw_unet=accelerator.unwrap_model(unet), lora_configs=configs, lora_params=trained,
                 optimizer=optimizer, lr_scheduler=lr_scheduler, system=info, ema=ema, text_encoder=text_encoder)

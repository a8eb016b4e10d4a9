"""The LoRA training loop: data, model, optimizer, validation, early stopping, checkpoints.

Every random draw of step `s` (batch order, augmentation, caption variants, noise,
timesteps) comes from generators seeded by (seed, s), and the checkpoint holds the global RNG
state (LoRA dropout) too, so a resumed run on CPU ends with the same adapter as an
uninterrupted one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import diffusion
from .base import Base, load_base, vae_scale_factor
from .buckets import bucket_name
from .latents import LatentGroups, load_latents
from .lr_schedule import lr_factor
from .lora import attach_lora, keep_lora_fp32, lora_state
from .params import Params, TrainParams, to_dict
from .utils import (Interrupted, UserError, atomic_dir, atomic_torch_save, atomic_write_bytes, canonicalize_safetensors,
                    resolve_device, to_device, write_json)

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
FINISHED = "finished.json"  # beside the checkpoint once its run ended: its report and final curves


def step_seed(seed: int, step: int, stream: int) -> int:
    """Independent, reproducible seed for (run seed, step, stream)."""
    return (seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1)


# ----------------------------------------------------------------------------- data
class LatentBatches:
    """Seeded, resumable single-bucket batches over resident latents, with latent and caption
    augmentation.

    Batch `s` of process `rank` is a pure function of (seed, s, rank): no iterator state to save.
    Each epoch shuffles every bucket, cuts it into global batches (`batch_size` x processes; the
    rank takes its slice, so processes never share an item in a step) and shuffles the order
    of those batches. A bucket with fewer items than a global batch gives one smaller batch per
    epoch (all its items on one process; items // processes each on several, an item repeated
    only when the bucket has fewer items than processes); a larger one gives whole batches, and
    its remainder waits for the next epoch's shuffle.
    Captions are pre-tokenized in every variant (plain, + each quality term, and "" for
    dropout) into one table, `token_ids` [(1 + Q) * N + 1, 77]; a batch returns row numbers
    into it, so text embeddings can be cached per row. The latents may live on the GPU: the
    random draws stay on the CPU generators, so a batch is the same wherever they live.
    """

    def __init__(self, latents: LatentGroups, captions: list[str], tokenizer, train_params: TrainParams, seed: int,
                 rank: int = 0, world: int = 1):
        self.groups, self.seed, self.rank, self.world = latents, seed, rank, world
        self._plan: tuple[int, list[tuple[int, torch.Tensor]]] = (-1, [])
        self.batch_size = train_params.batch_size
        self.augment, self.captions = train_params.augment, train_params.captions
        self.n = len(latents)
        self.sizes, self.offsets = latents.sizes, latents.offsets
        glob = self.batch_size * world
        self.per_epoch = sum(n // glob if n >= glob else 1 for n in self.sizes)
        variants = [captions] + [[f"{c}, {q}" for c in captions] for q in self.captions.quality_terms] + [[""]]
        ids, trunc = zip(*(diffusion.tokenize(tokenizer, v) for v in variants))
        self.token_ids = torch.cat(ids)
        self.truncated = trunc[0]
        self.empty_row = len(self.token_ids) - 1

    def epoch_plan(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        """The epoch's global batches as (group, rows of that group), in training order."""
        gen = torch.Generator().manual_seed(step_seed(self.seed, epoch, 1))
        glob = self.batch_size * self.world
        plan = []
        for g, n in enumerate(self.sizes):
            perm = torch.randperm(n, generator=gen)
            if n >= glob:
                plan += [(g, perm[k * glob:(k + 1) * glob]) for k in range(n // glob)]
            else:  # one smaller batch: n // world per process (repeats only when n < processes)
                per = max(1, n // self.world)
                plan.append((g, perm.repeat(math.ceil(per * self.world / n))[:per * self.world]))
        if len(self.sizes) > 1:  # one bucket: the batches are already in a random order
            plan = [plan[k] for k in torch.randperm(len(plan), generator=gen).tolist()]
        return plan

    def indices(self, step: int) -> tuple[int, torch.Tensor]:
        """(group, rows of that group) of this process's batch at `step`."""
        epoch, pos = divmod(step, self.per_epoch)
        if self._plan[0] != epoch:  # drawn once per epoch (O(N) per draw)
            self._plan = (epoch, self.epoch_plan(epoch))
        g, rows = self._plan[1][pos]
        per = len(rows) // self.world
        return g, rows[self.rank * per:(self.rank + 1) * per]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented latents [b, 4, h, w] (where the latents live) and caption rows [b] into `token_ids`."""
        g, local = self.indices(step)
        idx = local + self.offsets[g]
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, 2))
        a = self.augment
        group = self.groups.tensors[g]
        lat = diffusion.latent_augment(group[to_device(local, group.device)], gen, a.noise_prob,
                                       a.noise_std, a.hflip_prob, a.crop_prob, a.crop_min_scale)
        c = self.captions
        drop = torch.rand(len(idx), generator=gen) < c.dropout_prob
        quality = torch.rand(len(idx), generator=gen) < c.quality_prob
        term = torch.randint(0, max(1, len(c.quality_terms)), (len(idx),), generator=gen)
        variant = torch.where(quality & (len(c.quality_terms) > 0), 1 + term, torch.zeros_like(term))
        rows = torch.where(drop, torch.full_like(idx, self.empty_row), variant * self.n + idx)
        return lat, rows


class TextEmbeddings:
    """Text-encoder outputs by caption row. A frozen encoder's (eval mode, so a cached embedding
    equals a recomputed one) are cached when all distinct rows fit in `limit_bytes` (templated
    fashion captions repeat a lot), computed per batch otherwise; an encoder that `trains`
    (train.text_encoder_lora) runs on every batch with gradients."""

    def __init__(self, text_encoder, token_ids: torch.Tensor, device: torch.device, limit_bytes: int = 1 << 30,
                 trains: bool = False):
        self.encoder, self.token_ids, self.device, self.trains = text_encoder, token_ids, device, trains
        uniq, self.inverse = torch.unique(token_ids, dim=0, return_inverse=True)
        plain = getattr(text_encoder, "module", text_encoder)  # a training encoder may be wrapped in DDP
        dtype = next(plain.parameters()).dtype
        size = len(uniq) * token_ids.shape[1] * plain.config.hidden_size * dtype.itemsize
        cache = size <= limit_bytes and not trains
        self.table = diffusion.encode_text(text_encoder, uniq).to(device) if cache else None
        log.info("text embeddings: %d distinct captions of %d rows, %s", len(uniq), len(token_ids),
                 f"cached ({size / 2**20:.1f} MiB)" if cache else
                 "computed every step (the text encoder trains)" if trains else "computed per step")

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[to_device(self.inverse[rows], self.device)]
        with torch.set_grad_enabled(self.trains):
            return self.encoder(to_device(self.token_ids[rows], self.device))[0]


# ----------------------------------------------------------------------------- state
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
    lora_dir: Path
    live_dir: Path
    report: Path
    checkpoint_dir: Path


@dataclass
class Model:
    """What a step runs on: the accelerator, the frozen base with its LoRA, optimizer and schedule."""

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
    ema: Optional[LoraEMA] = None  # train.ema.enabled
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


@dataclass
class Data:
    """Train batches, cached text embeddings and the fixed validation plan."""

    batches: "LatentBatches"
    text: "TextEmbeddings"
    val_latents: list[torch.Tensor]  # one [C, h, w] per val item (buckets may differ)
    val_encoder_hidden_states: Optional[torch.Tensor]  # of the frozen encoder; None when it trains
    val_ids: torch.Tensor  # val captions' token ids
    val_plan: diffusion.FixedEval
    val_truncated: int
    sample_size: tuple[int, int]  # (height, width) in pixels of the most common train bucket; 0 without a VAE


@dataclass
class RunState:
    early: EarlyStop
    step: int = 0
    best_lora: Optional[dict] = None  # the best adapter's weights by component (Model.adapter_state)
    history: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """One training run: everything `log_validation`, the checkpoints and the report need."""

    params: Params
    model: Model
    data: Data
    state: RunState
    live: Any = None  # dvclive.Live on the main process
    on_validation: Optional[Callable[[int, dict], None]] = None
    checkpoint_step: Optional[int] = None  # step of the last checkpoint written or restored

    def log_step(self, step: int, **metrics: float) -> None:
        """Training curves (train/loss, train/grad_norm, train/lr) at `step`."""
        if self.live is not None:
            self.live.step = step
            for name, value in metrics.items():
                self.live.log_metric(f"train/{name}", value)


# The modules whose code decides what a training step does (the train stage's code deps).
TRAIN_CODE = ("training", "diffusion", "lora", "base", "latents", "lr_schedule", "params")


def fingerprint(params: Params, latent_dir: Path, base_dir: Path, processes: int) -> dict[str, str]:
    """What a checkpoint must match to be resumed, part by part, so a refusal can name the part:
    train params and seed, process count (it sets the batches), latents, base model, code."""
    def digest(*chunks: bytes) -> str:
        return hashlib.sha256(b"".join(chunks)).hexdigest()

    unet_dir = base_dir / "unet"
    code_dir = Path(__file__).parent
    index = (latent_dir / "index.json").read_bytes()
    return {
        "params": json.dumps({"seed": params.seed, "train": to_dict(params.train)}, sort_keys=True),
        "processes": str(processes),
        "latents": digest(index),
        "buckets": json.dumps(bucket_settings(json.loads(index)["meta"]), sort_keys=True),
        "base": digest((unet_dir / "config.json").read_bytes(),
                       str(sorted((f.name, f.stat().st_size) for f in unet_dir.iterdir())).encode()),
        "code": digest(*((code_dir / f"{m}.py").read_bytes() for m in TRAIN_CODE)),
    }


def bucket_settings(meta: dict) -> dict:
    """How the latents were sized (precompute.shape, bucket_size, resolution, crop, the buckets),
    from the latent index's meta."""
    return {k: meta.get(k) for k in ("shape", "bucket_size", "resolution", "crop", "buckets")}


def mismatch(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """Why a checkpoint made under `saved` cannot continue a run under `current`, in words."""
    reasons = []
    if saved.get("params") != current["params"]:
        old, new = _flat(json.loads(saved.get("params") or "{}")), _flat(json.loads(current["params"]))
        changed = [f"{'' if k == 'seed' else 'train.'}{k.removeprefix('train.')} {old.get(k)!r} -> {new.get(k)!r}"
                   for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        reasons.append("params changed (" + ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "") + ")")
    if saved.get("buckets") != current["buckets"]:
        old, new = json.loads(saved.get("buckets") or "{}"), json.loads(current["buckets"])
        changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        reasons.append("bucket settings of the latents changed (" + ", ".join(changed[:4]) + ")")
    if saved.get("processes") != current["processes"]:
        reasons.append(f"process count {saved.get('processes')} -> {current['processes']}")
    for part, what in (("latents", "latents (data/latents) changed"), ("base", "base model (models/base) changed"),
                       ("code", "training code changed (" + ", ".join(f"{m}.py" for m in TRAIN_CODE) + ")")):
        if saved.get(part) != current[part]:
            reasons.append(what)
    return reasons


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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


def mixed_precision_for(train_params: TrainParams, device: torch.device) -> str:
    if train_params.mixed_precision == "auto":
        # fp16, not bf16: the SD1.5 step ran 19% faster in fp16 on an H100 (benchmarks/gpu.py,
        # GradScaler included), and fp32 LoRA weights keep fp16's range problems away.
        return "fp16" if device.type == "cuda" else "no"
    if train_params.mixed_precision == "fp16" and device.type != "cuda":
        raise UserError("train.mixed_precision: fp16 needs a CUDA GPU; on CPU use 'bf16' or 'no' (or 'auto')")
    return train_params.mixed_precision


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


WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The UNet's repeated blocks: compiled one by one, each kind compiles once and is reused.
COMPILE_REGIONS = ("BasicTransformerBlock", "ResnetBlock2D")


def compile_unet(unet, mode: str, cuda_graphs: bool = False, backend: str = "inductor"):
    """`train.compile`: 'full' wraps the whole UNet in torch.compile; 'regional' compiles each
    transformer and resnet block in place (blocks of one shape share the compiled code, so it
    compiles faster than the full graph; peft's LoRA layers are traced inside). `cuda_graphs`
    replays each compiled graph as a CUDA graph (one launch instead of hundreds of kernels)."""
    if mode == "none":
        return unet
    # SD1.5 has more distinct block shapes than dynamo's default of 8 compiled versions per function.
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; both exist in some versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    kw = dict(backend=backend, mode="reduce-overhead" if cuda_graphs else None)
    if mode == "full":
        return torch.compile(unet, **kw)
    blocks = [m for m in unet.modules() if type(m).__name__ in COMPILE_REGIONS]
    for block in blocks:
        block.compile(**kw)
    log.info("compile: %d blocks (%s) compiled in place%s", len(blocks), ", ".join(COMPILE_REGIONS),
             " with CUDA graphs" if cuda_graphs else "")
    return unet


# ----------------------------------------------------------------------------- setup
def setup_model(params: Params, base_dir: Path) -> Model:
    """Accelerator, frozen base in the compute dtype, LoRA params in fp32, AdamW and the LR schedule."""
    from accelerate import Accelerator

    train_params = params.train
    device = resolve_device(train_params.device, "train.device")
    mixed_precision = mixed_precision_for(train_params, device)
    accelerator = Accelerator(mixed_precision=mixed_precision,
                              gradient_accumulation_steps=train_params.gradient_accumulation,
                              cpu=device.type == "cpu")
    device = accelerator.device
    if not accelerator.is_main_process:  # one voice in the logs; every rank still computes the same validations
        logging.getLogger("fashion_lora").setLevel(logging.WARNING)
    info = system_check(accelerator, device)
    log.info("system: %s", info)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # Ampere+: TF32 matmuls for the fp32 parts
        torch.backends.cudnn.allow_tf32 = True

    weight_dtype = WEIGHT_DTYPES[mixed_precision]
    base = load_base(base_dir, device, weight_dtype, with_vae=train_params.samples.every > 0)
    unet = base.unet
    torch.manual_seed(params.seed)  # LoRA A matrices are drawn from the global RNG
    cfg = attach_lora(unet, train_params.lora)
    keep_lora_fp32(unet)
    if train_params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    lora_params = [q for q in unet.parameters() if q.requires_grad]
    n_trainable, n_total = sum(q.numel() for q in lora_params), sum(q.numel() for q in unet.parameters())
    log.info("trainable LoRA params: %d of %d UNet params (%.2f%%)", n_trainable, n_total,
             100 * n_trainable / n_total)
    configs = {"unet": cfg}
    groups = [{"params": lora_params}]
    te = train_params.text_encoder_lora
    if te.enabled:  # attached after the UNet's, so the UNet's LoRA draws the same numbers either way
        configs["text_encoder"] = attach_lora(base.text_encoder, te, "train.text_encoder_lora")
        keep_lora_fp32(base.text_encoder)
        text_params = [q for q in base.text_encoder.parameters() if q.requires_grad]
        groups.append({"params": text_params, "lr": te.learning_rate or train_params.learning_rate})
        log.info("text encoder LoRA: %d trainable params (lr %g)", sum(q.numel() for q in text_params),
                 groups[1]["lr"])

    optimizer = make_optimizer(groups, train_params, device)
    unet = compile_unet(unet, train_params.compile, train_params.cuda_graphs)
    min_ratio = train_params.min_lr / train_params.learning_rate
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, train_params.warmup_steps, train_params.cosine_period, train_params.restart_mult, min_ratio))
    # The LR scheduler is stepped by hand once per optimizer step (accelerate would step it
    # once per process).
    text_encoder = None
    if te.enabled:
        unet, text_encoder, optimizer = accelerator.prepare(unet, base.text_encoder, optimizer)
    else:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    trained = [q for g in groups for q in g["params"]]
    ema = LoraEMA(trained, train_params.ema.decay, train_params.ema.warmup) if train_params.ema.enabled else None
    return Model(accelerator, device, weight_dtype, base, unet, accelerator.unwrap_model(unet), configs, trained,
                 optimizer, lr_scheduler, info, ema, text_encoder)


def setup_data(params: Params, model: Model, latent_dir: Path) -> Data:
    """Train latents resident in memory with cached text embeddings; the val plan fixed by the seed."""
    base, accelerator = model.base, model.accelerator
    train = load_latents(latent_dir, "train")
    val = load_latents(latent_dir, "val")
    if len(train) == 0:
        raise UserError(f"{latent_dir}: no train latents; check filter.val_fraction and the data")
    if len(val) == 0:
        raise UserError(f"{latent_dir}: no val latents; validation needs some (filter.val_fraction)")
    if params.train.data_on_device and model.device.type == "cuda":
        # A quarter of the free memory at most: the UNet's activations need the rest.
        fits = train.nbytes < torch.cuda.mem_get_info(model.device)[0] // 4
        log.info("train latents (%.1f MiB) %s", train.nbytes / 2**20,
                 "on the GPU" if fits else "in host memory: too large for the GPU (train.data_on_device)")
        if fits:
            train = train.to(model.device)
    batches = LatentBatches(train, [it["caption"] for it in train.items], base.tokenizer, params.train,
                            params.seed, accelerator.process_index, accelerator.num_processes)
    trains_text = model.text_encoder is not None
    text = TextEmbeddings(model.text_encoder if trains_text else base.text_encoder, batches.token_ids, model.device,
                          trains=trains_text)
    val_ids, val_truncated = diffusion.tokenize(base.tokenizer, [it["caption"] for it in val.items])
    # a training encoder is re-encoded at each validation (log_validation)
    val_encoder_hidden_states = None if trains_text else diffusion.encode_text(base.text_encoder, val_ids).float().cpu()
    val_latents = val.per_item()
    # Validation draws timesteps like training does, so the best checkpoint is chosen by the
    # objective being optimised (evaluate reports the uniform-timestep loss per band).
    plan = diffusion.fixed_eval([tuple(v.shape) for v in val_latents], params.train.val_repeats,
                                base.noise_scheduler.config.num_train_timesteps, params.seed,
                                params.train.timestep_bias)
    log.info("train %d latents in buckets %s (%d batches per epoch), val %d (x%d fixed draws); "
             "%d of %d train captions truncated at %d tokens", len(train), _bucket_sizes(train),
             batches.per_epoch, len(val), params.train.val_repeats, batches.truncated, len(train), base.tokenizer.model_max_length)
    # samples are drawn at the most common train bucket
    top = max(range(len(train.tensors)), key=lambda g: train.sizes[g])
    factor = vae_scale_factor(base.vae) if base.vae else 0
    size = (train.tensors[top].shape[-2] * factor, train.tensors[top].shape[-1] * factor)
    return Data(batches, text, val_latents, val_encoder_hidden_states, val_ids, plan, val_truncated, size)


def _bucket_sizes(groups: LatentGroups) -> str:
    """'64x96: 1700, 96x64: 12' (pixels at the VAE's 8x; the latent shape x 8)."""
    return ", ".join(f"{bucket_name(it['bucket'])}: {n}" if "bucket" in it else f"{tuple(t.shape[1:])}: {n}"
                     for t, n, it in zip(groups.tensors, groups.sizes, [groups.items[o] for o in groups.offsets]))


def open_live(live_dir: Path, train_params: TrainParams, snapshot: Optional[dict[str, str]]):
    """dvclive logger. A resumed run first puts back the curves saved in its checkpoint, so what
    DVC or a previous run left in `live_dir` never mixes in."""
    from dvclive import Live

    if snapshot is not None:
        restore_live(live_dir, snapshot)
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=snapshot is not None)
    live.log_params({"lora_rank": train_params.lora.rank, "lora_alpha": train_params.lora.alpha,
                     "learning_rate": train_params.learning_rate, "batch_size": train_params.batch_size,
                     "max_steps": train_params.max_steps})
    return live


def snapshot_live(live_dir: Path) -> dict[str, str]:
    """Every file dvclive wrote so far (curves, params, sample images), base64 by relative path."""
    return {str(f.relative_to(live_dir)): base64.b64encode(f.read_bytes()).decode()
            for f in sorted(live_dir.rglob("*")) if f.is_file()}


def restore_live(live_dir: Path, snapshot: dict[str, str]) -> None:
    if live_dir.exists():
        shutil.rmtree(live_dir)
    for rel, data in snapshot.items():
        atomic_write_bytes(live_dir / rel, base64.b64decode(data))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, run: Run, fp: dict[str, str], live_dir: Path) -> None:
    """Everything a resumed run needs to continue bit-exactly (on CPU), and the dvclive curves
    logged so far; `restore_checkpoint` reads it."""
    model, state = run.model, run.state
    scaler = model.accelerator.scaler
    ckpt = {
        "fingerprint": json.dumps(fp, sort_keys=True), "step": state.step, "lora": model.adapter_state(),
        "best_lora": state.best_lora or {}, "optimizer": model.optimizer.optimizer.state_dict(),
        "lr_scheduler": model.lr_scheduler.state_dict(),  # lambdas are stored as None: code is never pickled
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "ema": model.ema.state_dict() if model.ema is not None else {},
        "early": state.early.state_dict(),
        "history": json.dumps(state.history),
        "live": json.dumps(snapshot_live(live_dir)),
    }
    # Fresh tensors and interned keys: pickle memoizes by object identity, and the optimizer
    # state of a resumed run holds other (equal) objects than a fresh run's, which would change
    # the bytes of an equal checkpoint.
    atomic_torch_save(_fresh(ckpt), path)
    run.checkpoint_step = state.step


def restore_checkpoint(path: Path, run: Run, fp: dict[str, str]) -> Optional[dict]:
    """Load a checkpoint written by `save_checkpoint` into the run. Returns it, or None when
    there is none to use (the log says why)."""
    ckpt = _load_checkpoint(path, fp)
    if ckpt is None:
        return None
    model, state = run.model, run.state
    for component, m in model.adapters().items():
        _set_lora(m, ckpt["lora"][component])
    model.optimizer.optimizer.load_state_dict(ckpt["optimizer"])
    model.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    scaler = model.accelerator.scaler
    if scaler is not None and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"])
    if torch.cuda.is_available() and ckpt["cuda_rng"]:
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    if model.ema is not None:
        model.ema.load_state_dict(ckpt["ema"])
    state.step = run.checkpoint_step = ckpt["step"]
    state.early.load_state_dict(ckpt["early"])
    state.best_lora = ckpt["best_lora"] or None
    state.history = json.loads(ckpt["history"])
    return ckpt


def _fresh(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _fresh(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fresh(v) for v in obj)
    return obj


def _load_checkpoint(path: Path, fp: dict[str, str]) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(ckpt["fingerprint"]) if isinstance(ckpt.get("fingerprint"), str) else {}
    except Exception as e:  # a corrupt checkpoint must not block training: start fresh, loudly
        log.warning("ignoring unreadable checkpoint %s (%s); starting from step 0", path, e)
        return None
    reasons = mismatch(saved, fp) if saved else ["it was written by an older version of this code"]
    if reasons:
        log.warning("not resuming from %s (step %s): %s; starting from step 0", path, ckpt.get("step"),
                    "; ".join(reasons))
        return None
    return ckpt


def _set_lora(unet, state: dict) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"checkpoint LoRA keys do not match the model: {result.unexpected_keys[:3]}")


# ----------------------------------------------------------------------------- validation
def log_validation(run: Run, step: int) -> dict:
    """Val loss of the current adapter (its moving average with `train.ema`) on the fixed plan;
    tracks the best adapter and early stopping."""
    model, data, state, train_params = run.model, run.data, run.state, run.params.train
    unet = model.raw_unet
    model.train_mode(False)
    with model.eval_weights():
        with model.accelerator.autocast():  # a half-precision base with fp32 LoRA needs autocast on GPU
            encoder_hidden_states = (data.val_encoder_hidden_states if model.text_encoder is None else
                                     diffusion.encode_text(model.base.text_encoder, data.val_ids).float().cpu())
            mse, mae = diffusion.eval_losses(unet, model.base.noise_scheduler, data.val_latents,
                                             encoder_hidden_states, data.val_plan,
                                             batch_size=max(train_params.batch_size, 16),
                                             desc="validation (base model)" if step == 0 else None)
        metrics = diffusion.summarize(mse, mae)
        improved = state.early.update(metrics["mse"], step)
        if improved:
            state.best_lora = model.adapter_state()
        if run.live is not None and train_params.samples.every and len(state.history) % train_params.samples.every == 0:
            with model.accelerator.autocast():
                _log_sample(run.live, model.base, unet, train_params, data.sample_size, step)
    model.train_mode(True)
    state.history.append({"step": step, **metrics})
    if run.live is not None:
        run.live.step = step
        for k, v in metrics.items():
            run.live.log_metric(f"val/{k}", v)
    log.info("step %d: val MSE %.5f MAE %.5f std %.5f%s", step, metrics["mse"], metrics["mae"],
             metrics["loss_std"], " (best)" if improved else f" (no improvement x{state.early.bad})")
    if run.on_validation:
        run.on_validation(step, metrics)
    return metrics


# ----------------------------------------------------------------------------- main loop
def train(params: Params, base_dir: Path, latent_dir: Path, out: Outputs,
          on_validation: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Train the LoRA; write adapter, dvclive metrics, report and checkpoints. Returns the report
    (empty on processes other than the main one)."""
    train_params = params.train
    model = setup_model(params, base_dir)
    data = setup_data(params, model, latent_dir)
    accelerator = model.accelerator
    stopping = train_params.early_stopping
    run = Run(params, model, data, RunState(EarlyStop(stopping.patience, stopping.min_delta)), on_validation=on_validation)
    state = run.state
    ckpt_path = out.checkpoint_dir / CHECKPOINT
    fp = fingerprint(params, latent_dir, base_dir, accelerator.num_processes)
    ckpt = restore_checkpoint(ckpt_path, run, fp)
    finished = finished_run(out.checkpoint_dir, fp, state.step) if ckpt is not None else None
    if finished is not None:  # the same run ran to its end before: same files again, no training
        return reuse_finished(run, out, finished)
    if ckpt is None:
        torch.manual_seed(params.seed)
    else:
        log.info("resuming from %s at step %d (best val MSE %.5f at step %d)", ckpt_path, state.step,
                 state.early.best, state.early.best_step)
    if accelerator.is_main_process:
        run.live = open_live(out.live_dir, train_params, json.loads(ckpt["live"]) if ckpt is not None else None)
    if state.step == 0 and not state.history:
        log_validation(run, 0)  # step 0 = the base model itself (LoRA B=0)

    try:
        loop = training_loop(run, out, ckpt_path, fp)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(run, ckpt_path)) from None
    accelerator.wait_for_everyone()
    report = finish(run, out, fp, loop) if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


@dataclass
class LoopResult:
    stop_reason: str  # max_steps | early_stopping
    steps_at_start: int
    seconds: float  # the whole loop
    side_seconds: float  # validation and checkpoints inside it: reported apart from step speed
    first_step_seconds: float  # the first step alone (torch.compile compiles there)


def training_loop(run: Run, out: Outputs, ckpt_path: Path, fp: dict[str, str]) -> LoopResult:
    """Optimizer steps from `run.state.step` to the end (max_steps or early stopping), with
    validation and checkpoints.

    The host never waits for the GPU inside a step: batches arrive by non-blocking copies and
    each step's loss and gradient norm stay on the device until `sync_every` steps (or a
    validation or checkpoint) are due, then are read in one go and logged step by step.
    """
    from tqdm import tqdm

    params, model, data, state = run.params, run.model, run.data, run.state
    train_params, accelerator, base = params.train, model.accelerator, model.base
    unet, optimizer = model.unet, model.optimizer
    result = LoopResult("max_steps", state.step, 0.0, 0.0, 0.0)
    t_start = time.perf_counter()
    bar = tqdm(total=train_params.max_steps, initial=state.step, desc="train", unit="step",
               disable=not accelerator.is_main_process, mininterval=1.0)
    model.train_mode(True)
    grad_norm = torch.zeros((), device=model.device)
    pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []  # (step, loss, grad norm, lr) unread
    while state.step < train_params.max_steps and not state.early.stop:
        step = state.step
        for micro in range(train_params.gradient_accumulation):
            micro_step = step * train_params.gradient_accumulation + micro
            latents, rows = data.batches.batch(micro_step)
            gen = torch.Generator().manual_seed(step_seed(params.seed, micro_step, 3 + accelerator.process_index))
            t = diffusion.biased_timesteps(torch.rand(len(latents), generator=gen),
                                           base.noise_scheduler.config.num_train_timesteps, train_params.timestep_bias)
            noise = diffusion.sample_noise(latents.shape, train_params.noise_offset, gen)
            latents = to_device(latents, model.device).to(model.weight_dtype)
            noise, t = to_device(noise, model.device).to(model.weight_dtype), to_device(t, model.device)
            if train_params.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be reused
            with accelerator.accumulate(*[m for m in (unet, model.text_encoder) if m is not None]):
                with accelerator.autocast():  # (the text encoder's LoRA, when it trains, is fp32 too)
                    encoder_hidden_states = data.text(rows)
                    loss = diffusion.training_loss(unet, base.noise_scheduler, latents, noise, t,
                                                   encoder_hidden_states, train_params.min_snr_gamma)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.lora_params, train_params.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if model.ema is not None:
            model.ema.update(step)
        model.lr_scheduler.step()
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
            log_validation(run, state.step)
            if state.early.stop:
                result.stop_reason = "early_stopping"
        if accelerator.is_main_process and (due_checkpoint or state.step == train_params.max_steps
                                            or state.early.stop):
            save_checkpoint(ckpt_path, run, fp, out.live_dir)
        result.side_seconds += time.perf_counter() - t_side
    flush_step_log(run, pending, bar)
    bar.close()
    result.seconds = time.perf_counter() - t_start
    return result


def flush_step_log(run: Run, pending: list[tuple[int, torch.Tensor, torch.Tensor, float]], bar) -> None:
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


def interrupted_message(run: Run, ckpt_path: Path) -> str:
    """The one line a Ctrl-C leaves: where it stopped and how to go on."""
    saved = (f"last checkpoint at step {run.checkpoint_step} ({ckpt_path})" if run.checkpoint_step is not None
             else "no checkpoint yet (train.checkpoint_every)")
    return (f"train: stopped at step {run.state.step} of {run.params.train.max_steps}; {saved}. Run the same "
            "`dvc repro` or `dvc exp run ...` command again to resume from it")


def finish(run: Run, out: Outputs, fp: dict[str, str], loop: LoopResult) -> dict:
    """Save the best and last adapters (diffusers and kohya layouts), build the report, and
    record the finished run beside its checkpoint (so a rerun of it changes nothing)."""
    model, data, state = run.model, run.data, run.state
    if state.history[-1]["step"] != state.step:
        log_validation(run, state.step)
    last = save_adapters(run, out)
    base_val = state.history[0] if state.history[0]["step"] == 0 else None
    # The saved adapter is the early-stopping best (an improvement must beat min_delta).
    best = next(h for h in state.history if h["step"] == state.early.best_step)
    steps_run = state.step - loop.steps_at_start
    modules = {component: len({k.rsplit(".lora_", 1)[0] for k in s}) for component, s in last.items()}
    # Steady speed: without validation, checkpoints and the first step (compilation, warm-up).
    steady = loop.seconds - loop.side_seconds - loop.first_step_seconds
    report = {
        "steps": state.step, "stop_reason": loop.stop_reason, "best_step": best["step"],
        "best_val": {k: best[k] for k in ("mse", "mae", "loss_std")},
        "last_val": {k: state.history[-1][k] for k in ("mse", "mae", "loss_std")},
        "base_val": {k: base_val[k] for k in ("mse", "mae", "loss_std")} if base_val else None,
        "trainable_params": sum(q.numel() for q in model.lora_params),
        "unet_params": sum(q.numel() for q in model.raw_unet.parameters()),
        "lora_modules": sum(modules.values()),
        **({"text_encoder_lora_modules": modules["text_encoder"]} if "text_encoder" in modules else {}),
        # which weights were validated, selected and saved
        "weights": f"moving average (decay {run.params.train.ema.decay})" if model.ema is not None else "trained",
        "truncated_captions": {"train": data.batches.truncated, "val": data.val_truncated},
        "resumed_from_step": loop.steps_at_start or None,
        "seconds": round(loop.seconds, 2), "seconds_validation_and_checkpoints": round(loop.side_seconds, 2),
        "first_step_seconds": round(loop.first_step_seconds, 2),
        "steps_per_second": (round((steps_run - 1) / steady, 3) if steps_run > 1 and steady > 0
                             else round(1 / loop.first_step_seconds, 3) if steps_run else None),
        "peak_memory_mib": _peak_memory_mib(model.device), "system": model.system,
        "params": to_dict(run.params.train), "lr_restart_period": run.params.train.cosine_period,
        "val_history": state.history,
    }
    run.live.summary = {"best_val_mse": best["mse"], "best_step": best["step"], "steps": state.step}
    run.live.end()
    write_json(out.checkpoint_dir / FINISHED, {"fingerprint": fp, "step": state.step, "report": report,
                                               "live": snapshot_live(out.live_dir)})
    return report


def save_adapters(run: Run, out: Outputs) -> dict:
    """models/lora: the best adapter (diffusers and kohya layouts) and the last one, each with the
    text encoder's LoRA when it trained; returns the last (by component)."""
    from safetensors.torch import save_file

    from .lora import KOHYA_WEIGHTS, kohya_state, save_lora

    model, state = run.model, run.state
    with model.eval_weights():
        last = model.adapter_state()
    with atomic_dir(out.lora_dir) as tmp:  # the old adapter stays until the new one is complete
        best_file = save_lora(tmp, state.best_lora or last, model.lora_configs)
        save_lora(tmp / "last", last, model.lora_configs)
        if model.lora_configs["unet"].use_dora:
            log.info("no %s: the kohya LoRA format cannot hold DoRA's magnitude vectors", KOHYA_WEIGHTS)
        else:
            kohya, meta = kohya_state(best_file)
            save_file(kohya, str(tmp / KOHYA_WEIGHTS), metadata=meta)
            canonicalize_safetensors(tmp / KOHYA_WEIGHTS)
    return last


def finished_run(checkpoint_dir: Path, fp: dict[str, str], step: int) -> Optional[dict]:
    """The record `finish` left for this very run (same fingerprint and step), or None."""
    path = checkpoint_dir / FINISHED
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return record if record and record.get("fingerprint") == fp and record.get("step") == step else None


def reuse_finished(run: Run, out: Outputs, finished: dict) -> dict:
    """Rewrite the finished run's adapter, curves and report from its checkpoint: a rerun of a
    completed training run (`dvc repro -f`, a restored workspace) gives the same files."""
    accelerator = run.model.accelerator
    report: dict = {}
    if accelerator.is_main_process:
        log.info("%s holds this run finished at step %d (same params, data, base and code): writing its "
                 "adapter and reports again instead of training (delete the folder to train anew)",
                 out.checkpoint_dir, run.state.step)
        save_adapters(run, out)
        restore_live(out.live_dir, finished["live"])
        report = finished["report"]
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _log_sample(live, base, unet, train_params: TrainParams, size: tuple[int, int], step: int) -> None:
    """A fixed prompt and seed through the current adapter, logged as a step-numbered image."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    s = train_params.samples
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=unet, scheduler=DDIMScheduler.from_config(base.noise_scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    gen = torch.Generator().manual_seed(s.seed)
    image = pipe(s.prompt, num_inference_steps=s.steps, guidance_scale=s.guidance_scale, height=size[0],
                 width=size[1], generator=gen).images[0]
    unet.train(was_training)
    live.log_image(f"samples/step_{step:06d}.png", image)

"""Resume state: the fingerprint a checkpoint must match, checkpoint save and restore, the
dvclive curves kept inside it, and the record of a finished run that a rerun replays."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from ..code_deps import ROOT, closure
from ..errors import UserError
from ..files import atomic_torch_save, atomic_write_bytes, write_json
from ..params import Params, TrainParams, to_dict
from ..seeds import mix_seed
from .state import FINISHED, Run

log = logging.getLogger(__name__)
TRAIN_SCRIPT = ROOT / "stages" / "train.py"


def train_code() -> list[Path]:
    """The files whose code decides what a training step does: the train stage's import closure
    (the same list as its code deps in dvc.yaml)."""
    return [TRAIN_SCRIPT.relative_to(ROOT), *closure(TRAIN_SCRIPT)]


def fingerprint(params: Params, latent_dir: Path, base_dir: Path, processes: int) -> dict[str, str]:
    """What a checkpoint must match to be resumed, part by part, so a refusal can name the part:
    train params and seed, process count (it sets the batches), latents, base model, code."""
    def digest(*chunks: bytes) -> str:
        return hashlib.sha256(b"".join(chunks)).hexdigest()

    unet_dir = base_dir / "unet"
    index = (latent_dir / "index.json").read_bytes()
    return {
        "params": json.dumps({"seed": params.seed, "train": to_dict(params.train)}, sort_keys=True),
        "processes": str(processes),
        "latents": digest(index),
        "buckets": json.dumps(bucket_settings(json.loads(index)["meta"]), sort_keys=True),
        "base": digest((unet_dir / "config.json").read_bytes(),
                       str(sorted((f.name, f.stat().st_size) for f in unet_dir.iterdir())).encode()),
        "code": digest(*((ROOT / f).read_bytes() for f in train_code())),
    }


def bucket_settings(meta: dict) -> dict:
    """How the latents were sized (precompute.shape, bucket_size, resolution, crop, the buckets),
    from the latent index's meta."""
    return {k: meta.get(k) for k in ("shape", "bucket_size", "resolution", "crop", "buckets")}


PROCESSES = "process count"


def global_batch(fp: dict[str, str]) -> tuple[int, int, int]:
    """(processes, batch per process, their product: the global batch) of a fingerprint."""
    processes, batch = int(fp.get("processes") or 1), json.loads(fp.get("params") or "{}")["train"]["batch_size"]
    return processes, batch, processes * batch


def mismatch(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """Why a checkpoint made under `saved` cannot continue a run under `current`, in words.

    Another process count continues the run when the global batch (processes x
    `train.batch_size`) is the same: the batches of a step are then the same items."""
    reasons = []
    old, new = _flat(json.loads(saved.get("params") or "{}")), _flat(json.loads(current["params"]))
    (p_old, _, g_old), (p_new, _, g_new) = global_batch(saved), global_batch(current)
    if p_old != p_new and g_old == g_new:  # the batch per process follows the process count
        old.pop("train.batch_size"), new.pop("train.batch_size")
    if old != new:
        changed = [f"{'' if k == 'seed' else 'train.'}{k.removeprefix('train.')} {old.get(k)!r} -> {new.get(k)!r}"
                   for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        reasons.append("params changed (" + ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "") + ")")
    if saved.get("buckets") != current["buckets"]:
        old, new = json.loads(saved.get("buckets") or "{}"), json.loads(current["buckets"])
        changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        reasons.append("bucket settings of the latents changed (" + ", ".join(changed[:4]) + ")")
    if p_old != p_new and g_old != g_new:
        reasons.append(f"{PROCESSES} {p_old} -> {p_new} with the global batch {g_old} -> {g_new}")
    for part, what in (("latents", "latents (data/latents) changed"), ("base", "base model (models/base) changed"),
                       ("code", "training code changed (stages/train.py or a module it imports)")):
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


# ----------------------------------------------------------------------------- dvclive curves
def open_live(live_dir: Path, train_params: TrainParams, snapshot: dict[str, str] | None):
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
def rng_states(accelerator) -> list[dict[str, torch.Tensor | list]]:
    """Every process's global RNG state (LoRA dropout), in rank order: a collective, so every
    process calls it when a checkpoint is due, though only the main one saves."""
    own = {"rng": torch.get_rng_state(),
           "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if accelerator.num_processes == 1:
        return [own]
    from accelerate.utils import gather_object

    return gather_object([own])


def dropout_seed(seed: int, rank: int) -> int:
    """The global RNG's seed of process `rank` in a fresh run: LoRA dropout draws differ per
    process (rank 0 keeps the run's seed)."""
    return seed if rank == 0 else mix_seed(seed, 1_000_000 + rank)


def save_checkpoint(run: Run, rngs: list[dict]) -> None:
    """Everything a resumed run needs to continue bit-exactly (on CPU), every process's RNG
    state (`rng_states`) and the dvclive curves logged so far; `restore_checkpoint` reads it."""
    model, state = run.model, run.state
    scaler = model.accelerator.scaler
    ckpt = {
        "fingerprint": json.dumps(run.fingerprint, sort_keys=True), "step": state.step, "lora": model.adapter_state(),
        "best_lora": state.best_lora or {}, "optimizer": model.optimizer.optimizer.state_dict(),
        "lr_scheduler": model.lr_scheduler.state_dict(),  # lambdas are stored as None: code is never pickled
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": [r["rng"] for r in rngs],
        "cuda_rng": [r["cuda_rng"] for r in rngs],
        "ema": model.ema.state_dict() if model.ema is not None else {},
        "early": state.early.state_dict(),
        "history": json.dumps(state.history),
        "live": json.dumps(snapshot_live(run.out.live_dir)),
    }
    # Fresh tensors and interned keys: pickle memoizes by object identity, and the optimizer
    # state of a resumed run holds other (equal) objects than a fresh run's, which would change
    # the bytes of an equal checkpoint.
    atomic_torch_save(_fresh(ckpt), run.out.checkpoint)
    run.checkpoint_step = state.step


def restore_checkpoint(run: Run) -> dict | None:
    """Load the run's checkpoint (written by `save_checkpoint`) into it. Returns it, or None
    when there is none to use (the log says why)."""
    ckpt = load_checkpoint(run.out.checkpoint, run.fingerprint)
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
    rank = model.accelerator.process_index
    if rank < len(ckpt["rng"]):
        torch.set_rng_state(ckpt["rng"][rank])
        if torch.cuda.is_available() and ckpt["cuda_rng"][rank]:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"][rank])
    else:  # a resume on more processes than wrote the checkpoint: a new process starts its own stream
        torch.manual_seed(dropout_seed(mix_seed(run.params.seed, ckpt["step"]), rank))
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


def load_checkpoint(path: Path, fp: dict[str, str]) -> dict | None:
    """The checkpoint at `path` if it is readable and matches fingerprint `fp`; else None, with
    a warning that names why."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(ckpt["fingerprint"]) if isinstance(ckpt.get("fingerprint"), str) else {}
    except Exception as e:  # a corrupt checkpoint must not block training: start fresh, loudly
        log.warning("ignoring unreadable checkpoint %s (%s); starting from step 0", path, e)
        return None
    reasons = mismatch(saved, fp) if saved else ["it was written by an older version of this code"]
    if len(reasons) == 1 and reasons[0].startswith(PROCESSES) and not _ended(path, ckpt.get("step")):
        # an interrupted run on another process count: a new run would throw its progress away
        (p_old, b_old, g_old), (p_new, b_new, _) = global_batch(saved), global_batch(fp)
        keep = f", or keep the global batch: train.batch_size {g_old // p_new} on {p_new}" if g_old % p_new == 0 else ""
        raise UserError(f"train: {path} (step {ckpt.get('step')}) was written by {p_old} process(es) x train.batch_size "
                        f"{b_old} = a global batch of {g_old}; this run is {p_new} x {b_new}. Resume it on {p_old}"
                        f"{keep} (or delete {path.parent} to start over). The checkpoint is kept")
    if reasons:
        log.warning("not resuming from %s (step %s): %s; starting from step 0", path, ckpt.get("step"),
                    "; ".join(reasons))
        return None
    return ckpt


def _ended(path: Path, step) -> bool:
    """Whether the checkpoint at `path` is that of a run that ended (its finished record, left by
    `record_finished`, is at the same step): nothing is left to resume."""
    record = read_finished(path.parent / FINISHED)
    return record is not None and record.get("step") == step


def read_finished(path: Path) -> dict | None:
    """The finished record `record_finished` wrote at `path`, or None (absent or unreadable)."""
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _set_lora(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"checkpoint LoRA keys do not match the model: {result.unexpected_keys[:3]}")


# ----------------------------------------------------------------------------- finished runs
def finished_run(run: Run) -> dict | None:
    """The record `report.finish` left for this very run (same fingerprint and step), or None."""
    record = read_finished(run.out.finished)
    matches = record and record.get("fingerprint") == run.fingerprint and record.get("step") == run.state.step
    return record if matches else None


def record_finished(run: Run, report: dict) -> None:
    """Leave the finished run's report and final curves beside its checkpoint, so a rerun of the
    same run (`dvc repro -f`, a restored workspace) writes the same files without training."""
    write_json(run.out.finished, {"fingerprint": run.fingerprint, "step": run.state.step, "report": report,
                                  "live": snapshot_live(run.out.live_dir)})

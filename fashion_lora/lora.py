"""LoRA on the UNet: attach (peft), keep fp32, save in diffusers layout, load, kohya export."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from .base import check_base_dir
from .params import LoraParams
from .utils import UserError, canonicalize_safetensors

log = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "fashion_lora_kohya.safetensors"


def lora_config(lora: LoraParams):
    from peft import LoraConfig

    # Default peft init (B = 0): the adapter starts as an exact no-op on the base.
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), init_lora_weights=True, use_dora=lora.use_dora)


def attach_lora(unet, lora: LoraParams):
    """Freeze the UNet, add the LoRA adapter, and check that only `lora_` params train."""
    unet.requires_grad_(False)
    cfg = lora_config(lora)
    unet.add_adapter(cfg)
    trainable = [n for n, q in unet.named_parameters() if q.requires_grad]
    bad = [n for n in trainable if "lora_" not in n]
    if bad or not trainable:
        raise RuntimeError(f"LoRA setup error: trainable non-LoRA params {bad[:3]} (of {len(trainable)})")
    targeted = {n.rsplit(".lora_", 1)[0] for n in trainable}
    missing = [t for t in lora.target_modules if not any(m == t or m.endswith("." + t) for m in targeted)]
    if missing:
        raise UserError(f"train.lora.target_modules: {missing} match no module of this UNet")
    return cfg


def keep_lora_fp32(unet) -> None:
    """With a half-precision base, LoRA params stay fp32 (else GradScaler cannot unscale them)."""
    for parameter in unet.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def lora_state(unet) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    # A copy, never a view: the caller may keep it (best adapter) while training goes on.
    return {k: v.detach().to("cpu", torch.float32, copy=True).contiguous()
            for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(unet, cfg, out_dir: Path, state: Optional[dict] = None) -> Path:
    """Write `pytorch_lora_weights.safetensors` in the layout `load_lora_weights(dir)` reads.

    The LoRA config (rank, alpha, targets) goes into the file's metadata: without it diffusers
    assumes alpha == rank and would scale a rank-12/alpha-24 adapter by half.
    """
    from diffusers import StableDiffusionPipeline

    out_dir.mkdir(parents=True, exist_ok=True)
    # peft keeps target_modules as a set: sort it, or the metadata (and the file hash) would
    # change with Python's string hash seed.
    meta = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.to_dict().items()}
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=state if state is not None else lora_state(unet),
        unet_lora_adapter_metadata=meta, safe_serialization=True)
    canonicalize_safetensors(out_dir / LORA_WEIGHTS)
    return out_dir / LORA_WEIGHTS


def check_lora_file(path: Path) -> Path:
    """Resolve a LoRA dir or file to a readable safetensors file, or raise a clear error."""
    from safetensors import safe_open

    file = path / LORA_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"LoRA weights not found: expected {file} (a {LORA_WEIGHTS} written by the "
                        "train stage); run `dvc repro train` or pass the right --lora path")
    if file.suffix != ".safetensors":
        raise UserError(f"{file}: LoRA weights must be a .safetensors file (pickles are refused)")
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise UserError(f"{file}: not a readable safetensors file ({e})") from None
    if not any("lora" in k for k in keys):
        raise UserError(f"{file}: holds no LoRA tensors (keys like '...lora_A.weight' expected)")
    return file


def load_pipeline(base_dir: Path, lora: Optional[Path], device: torch.device,
                  dtype: torch.dtype = torch.float32):
    """The one loader: base from `models/base`, LoRA via `load_lora_weights`, then eval mode."""
    from diffusers import StableDiffusionPipeline

    check_base_dir(base_dir)
    pipe = StableDiffusionPipeline.from_pretrained(base_dir, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False, use_safetensors=True)
    if lora is not None:
        file = check_lora_file(lora)
        pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="fashion")
    pipe.unet.eval()  # LoRA dropout would otherwise stay active at inference
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def kohya_state(diffusers_file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Convert our diffusers LoRA file to kohya keys (`lora_unet_*.lora_down/.lora_up/.alpha`).

    The alpha written per module is the adapter's true alpha from the file's metadata (the
    stock converter writes alpha = rank, which rescales any adapter trained with alpha != rank).
    """
    from safetensors import safe_open

    with safe_open(str(diffusers_file), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if any("lora_magnitude_vector" in k for k in tensors):
        raise UserError(f"{diffusers_file}: a DoRA adapter (train.lora.use_dora) has magnitude vectors the kohya "
                        "LoRA format cannot hold; use the diffusers file or `python -m fashion_lora export fused`")
    # diffusers stores the peft config with each key prefixed by the component ("unet.r").
    cfg = {k.removeprefix("unet."): v for k, v in json.loads(meta.get("lora_adapter_metadata", "{}")).items()}
    if "lora_alpha" not in cfg:
        raise UserError(f"{diffusers_file}: no LoRA metadata (lora_alpha); re-save it with the train stage")
    alpha_pattern = cfg.get("alpha_pattern") or {}
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("unet.").removesuffix(".lora_A.weight")
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = t
        out[f"{name}.lora_up.weight"] = tensors[key.replace(".lora_A.", ".lora_B.")]
        alpha = next((v for pat, v in alpha_pattern.items() if module.endswith(pat)), cfg["lora_alpha"])
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    meta_out = {"ss_network_module": "networks.lora", "ss_network_dim": str(cfg.get("r")),
                "ss_network_alpha": str(cfg["lora_alpha"]), "ss_base_model_version": "sd_v1"}
    return out, meta_out

"""LoRA on the UNet (and the text encoder): attach (peft), keep fp32, save in diffusers layout,
load, kohya export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .base import check_base_dir
from .errors import UserError
from .files import canonicalize_safetensors
from .params import LoraParams, TextEncoderLoraParams

log = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "fashion_lora_kohya.safetensors"
# The caption token window the adapter was trained with (`train.max_token_length`, resolved), in
# its file's metadata: the CLI, evaluate and generate encode prompts to the same length.
TOKEN_WINDOW_KEY = "fashion_lora_max_token_length"
KOHYA_TOKEN_KEY = "ss_max_token_length"  # kohya's: 75 tokens per window (77 with start and end)
# Rank and alpha each part trained with, in both files' metadata (kohya's ss_network_dim and
# ss_network_alpha hold one part's, the UNet's, and after `folded` its alpha is the rank).
ADAPTER_KEY = "fashion_lora_adapter"


def lora_config(lora: LoraParams | TextEncoderLoraParams):
    from peft import LoraConfig

    # Default peft init (B = 0): the adapter starts as an exact no-op on the base.
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), init_lora_weights=True,
                      use_dora=getattr(lora, "use_dora", False))


def attach_lora(model, lora: LoraParams | TextEncoderLoraParams, key: str = "train.lora"):
    """Freeze `model` (the UNet, or the text encoder with `key` train.text_encoder_lora), add the
    LoRA adapter, and check that only `lora_` params train and every target matched."""
    model.requires_grad_(False)
    cfg = lora_config(lora)
    model.add_adapter(cfg)
    trainable = [n for n, q in model.named_parameters() if q.requires_grad]
    bad = [n for n in trainable if "lora_" not in n]
    if bad or not trainable:
        raise RuntimeError(f"LoRA setup error: trainable non-LoRA params {bad[:3]} (of {len(trainable)})")
    targeted = {n.rsplit(".lora_", 1)[0] for n in trainable}
    missing = [t for t in lora.target_modules if not any(m == t or m.endswith("." + t) for m in targeted)]
    if missing:
        raise UserError(f"{key}.target_modules: {missing} match no module of this {type(model).__name__}")
    return cfg


def keep_lora_fp32(model) -> None:
    """With a half-precision base, LoRA params stay fp32 (else GradScaler cannot unscale them)."""
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def lora_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    # A copy, never a view: the caller may keep it (best adapter) while training goes on.
    return {k: v.detach().to("cpu", torch.float32, copy=True).contiguous()
            for k, v in get_peft_model_state_dict(model).items()}


def save_lora(out_dir: Path, states: dict[str, dict[str, torch.Tensor]], configs: dict, max_token_length: int) -> Path:
    """Write `pytorch_lora_weights.safetensors` in the layout `load_lora_weights(dir)` reads:
    `states` and `configs` by pipeline component ("unet", and "text_encoder" when it trained;
    diffusers prefixes each key with its component). The pinned stack and the previous major one
    (diffusers 0.32 / transformers 4.x) load it alike (benchmarks/previous_stack.py):

    - the text encoder's keys in CLIP's classic layout (`text_model.encoder.layers...`), which 4.x
      needs and diffusers strips for transformers 5's flat encoder;
    - each part's alpha / rank folded into its `lora_B` and `lora_alpha` written as the rank:
      diffusers 0.32 reads no alpha and assumes alpha == rank, which would scale a
      rank-12/alpha-24 adapter by half. The product B·A·alpha/rank, all that inference uses, is
      the same; the trained rank and alpha of both parts stay in `fashion_lora_adapter`.

    Each LoRA config (rank, targets) goes into the file's metadata, and so does the caption token
    window it was trained with.
    """
    from diffusers import StableDiffusionPipeline

    layers = {c: folded(classic_keys(c, s), configs[c]) for c, s in states.items()}

    def meta(component: str) -> dict | None:
        if component not in states:
            return None
        # peft keeps target_modules as a set: sort it, or the metadata (and the file hash) would
        # change with Python's string hash seed.
        cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in configs[component].to_dict().items()}
        return {**cfg, "lora_alpha": float(cfg["r"])}  # the scale is in lora_B (above)

    trained = {c: {"rank": configs[c].r, "alpha": float(configs[c].lora_alpha), "scale_in_lora_B": True}
               for c in states}
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers.get("text_encoder"),
        unet_lora_adapter_metadata=meta("unet"), text_encoder_lora_adapter_metadata=meta("text_encoder"),
        safe_serialization=True)
    canonicalize_safetensors(out_dir / LORA_WEIGHTS, {TOKEN_WINDOW_KEY: str(max_token_length),
                                                      ADAPTER_KEY: json.dumps(trained, sort_keys=True)})
    return out_dir / LORA_WEIGHTS


def classic_keys(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text encoder's LoRA keys under `text_model.` (CLIP's classic layout); other parts as they are."""
    if component != "text_encoder":
        return state
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}


def folded(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """`state` with lora_B multiplied by the config's alpha / rank (a copy; 1 leaves it as it is).
    Our configs set no per-module rank or alpha patterns, which would need their own factor."""
    if config.rank_pattern or config.alpha_pattern or config.use_rslora:
        raise ValueError("folding alpha into lora_B assumes one rank and alpha per component, no rsLoRA")
    scale = config.lora_alpha / config.r
    if scale == 1:
        return state
    return {k: v * scale if ".lora_B." in k else v for k, v in state.items()}


def token_window(file: Path) -> int | None:
    """The caption token window an adapter file records (ours or kohya's), None if it has none."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get(TOKEN_WINDOW_KEY, "").isdigit():
        return int(meta[TOKEN_WINDOW_KEY])
    if meta.get(KOHYA_TOKEN_KEY, "").isdigit():
        return int(meta[KOHYA_TOKEN_KEY]) // 75 * 77
    return None


def adapter_token_window(lora: Path) -> int:
    """The token window to encode prompts to for the adapter `lora` (a folder or file): the one
    it was trained with, or SD's 77 when the file records none (another trainer's adapter)."""
    file = check_lora_file(lora)
    window = token_window(file)
    if window is None:
        log.warning("%s records no caption token window: prompts are encoded to 77 tokens", file)
        return 77
    return window


def lora_components(pipe) -> list[str]:
    """The pipeline components that carry a LoRA: the UNet, and the text encoder when it trained
    too (what fuse_lora/unfuse_lora must touch)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [c for c in ("unet", "text_encoder")
            if any(isinstance(m, BaseTunerLayer) for m in getattr(pipe, c).modules())]


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


def load_pipeline(base_dir: Path, lora: Path | None, device: torch.device,
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
    pipe.text_encoder.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def kohya_state(diffusers_file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Convert our diffusers LoRA file to kohya keys (`lora_unet_*` and, when the text encoder
    trained, `lora_te_*`, each with `.lora_down/.lora_up/.alpha`).

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
    # diffusers stores each component's peft config with its keys prefixed ("unet.r", "text_encoder.r").
    stored = json.loads(meta.get("lora_adapter_metadata", "{}"))
    out: dict[str, torch.Tensor] = {}
    configs = {}
    for component, prefix in KOHYA_PREFIX.items():
        keys = [k for k in tensors if k.startswith(component + ".") and k.endswith(".lora_A.weight")]
        if not keys:
            continue
        cfg = {k.removeprefix(component + "."): v for k, v in stored.items() if k.startswith(component + ".")}
        if "lora_alpha" not in cfg:
            raise UserError(f"{diffusers_file}: no LoRA metadata ({component} lora_alpha); re-save it with the train stage")
        configs[component] = cfg
        alpha_pattern = cfg.get("alpha_pattern") or {}
        for key in keys:
            module = key.removeprefix(component + ".").removesuffix(".lora_A.weight")
            # kohya names CLIP's modules in its classic layout (text_model.encoder.layers...), which
            # transformers 5 flattened to encoder.layers...; A1111 and ComfyUI look up the classic one.
            kohya_module = "text_model." + module if component == "text_encoder" and not module.startswith(
                "text_model.") else module
            name = prefix + kohya_module.replace(".", "_")
            out[f"{name}.lora_down.weight"] = tensors[key]
            out[f"{name}.lora_up.weight"] = tensors[key.replace(".lora_A.", ".lora_B.")]
            alpha = next((v for pat, v in alpha_pattern.items() if module.endswith(pat)), cfg["lora_alpha"])
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    if "unet" not in configs:
        raise UserError(f"{diffusers_file}: no UNet LoRA tensors (keys 'unet....lora_A.weight') to export")
    unet = configs["unet"]
    meta_out = {"ss_network_module": "networks.lora", "ss_network_dim": str(unet.get("r")),
                "ss_network_alpha": str(unet["lora_alpha"]), "ss_base_model_version": "sd_v1"}
    if ADAPTER_KEY in meta:
        meta_out[ADAPTER_KEY] = meta[ADAPTER_KEY]
    if meta.get(TOKEN_WINDOW_KEY, "").isdigit():
        meta_out[KOHYA_TOKEN_KEY] = str(int(meta[TOKEN_WINDOW_KEY]) // 77 * 75)
    return out, meta_out

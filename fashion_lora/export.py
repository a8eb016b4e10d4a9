"""Export the adapter: a fused full model (no adapter at run time) or a kohya single file.

`python -m fashion_lora export fused|kohya OUT` calls these. The train stage already writes
models/lora/fashion_lora_kohya.safetensors; the command is for other paths or adapters.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .files import atomic_dir, canonicalize_safetensors
from .folders import save_pipeline

log = logging.getLogger(__name__)


def export_fused(base: Path, lora: Path, out: Path) -> None:
    import torch

    from .lora import load_pipeline, lora_components

    pipe = load_pipeline(base, lora, torch.device("cpu"))
    pipe.fuse_lora(components=lora_components(pipe), lora_scale=1.0)  # the text encoder's LoRA too, if any
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter modules
    with atomic_dir(out) as tmp:
        save_pipeline(pipe, tmp)


def export_kohya(lora: Path, out: Path) -> None:
    from safetensors.torch import save_file

    from .lora import check_lora_file, kohya_state

    state, meta = kohya_state(check_lora_file(lora))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    canonicalize_safetensors(out)

"""Export the adapter: a fused full model (no adapter at run time) or a kohya single file.

    python -m fashion_lora.export fused out/fashion-sd      # diffusers folder, LoRA merged in
    python -m fashion_lora.export kohya out/fashion.safetensors

The train stage already writes models/lora/fashion_lora_kohya.safetensors; this command is
for other paths or adapters.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .utils import UserError, atomic_dir, canonicalize_safetensors, setup_logging

log = logging.getLogger("fashion_lora.export")


def export_fused(base: Path, lora: Path, out: Path) -> None:
    import torch

    from .lora import load_pipeline

    pipe = load_pipeline(base, lora, torch.device("cpu"))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter modules
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)


def export_kohya(lora: Path, out: Path) -> None:
    from safetensors.torch import save_file

    from .lora import check_lora_file, kohya_state

    state, meta = kohya_state(check_lora_file(lora))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    canonicalize_safetensors(out)


def main(argv=None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m fashion_lora.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("format", choices=("fused", "kohya"))
    ap.add_argument("out", type=Path, help="output folder (fused) or .safetensors file (kohya)")
    ap.add_argument("--base", type=Path, default=Path("models/base"))
    ap.add_argument("--lora", type=Path, default=Path("models/lora"))
    args = ap.parse_args(argv)
    try:
        if args.format == "fused":
            export_fused(args.base, args.lora, args.out)
        else:
            export_kohya(args.lora, args.out)
    except UserError as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s (%s)", args.out, args.format)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

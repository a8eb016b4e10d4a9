"""Generate a garment image with the trained LoRA.

    python -m fashion_lora.generate "The lady wears a red floral dress." --steps 30 --out out.png

Loads the base from models/base and the adapter from models/lora (both written by the
pipeline); --no-lora renders the base alone for comparison.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .utils import UserError, resolve_device, setup_logging

log = logging.getLogger("fashion_lora.generate")
DEFAULT_NEGATIVE = ("blurry, distorted, low quality, bad anatomy, multiple people, deformed, extra limbs, "
                    "watermark, text, cropped, out of frame")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m fashion_lora.generate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("prompt", help="text prompt, e.g. a DeepFashion-style caption")
    ap.add_argument("--out", type=Path, default=Path("out.png"), help="PNG to write")
    ap.add_argument("--base", type=Path, default=Path("models/base"), help="base model folder (diffusers)")
    ap.add_argument("--lora", type=Path, default=Path("models/lora"),
                    help="LoRA folder or .safetensors file (diffusers or kohya format)")
    ap.add_argument("--no-lora", action="store_true", help="render with the base model only")
    ap.add_argument("--steps", type=int, default=30, help="sampling steps")
    ap.add_argument("--guidance", type=float, default=12.0, help="classifier-free guidance scale")
    ap.add_argument("--negative", default=DEFAULT_NEGATIVE, help="negative prompt ('' for none)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same image)")
    ap.add_argument("--height", type=int, default=None, help="pixels; default: the base model's native size")
    ap.add_argument("--width", type=int, default=None, help="pixels; default: the base model's native size")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    return args


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        from .lora import load_pipeline
        from .pipeline import generate_image

        device = resolve_device(args.device, "--device")
        pipe = load_pipeline(args.base, None if args.no_lora else args.lora, device)
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        pipe.set_progress_bar_config(disable=False, desc="denoise", leave=False)  # the progress bar
        image = generate_image(pipe, args.prompt, args.negative, args.steps, args.guidance, args.seed,
                               args.height or native, args.width or native)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out)
        log.info("wrote %s (%dx%d, %d steps, seed %d, %s)", args.out, image.width, image.height, args.steps,
                 args.seed, "base only" if args.no_lora else f"LoRA {args.lora}")
    except UserError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

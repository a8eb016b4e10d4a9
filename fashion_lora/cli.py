"""Command line: render an image with the trained LoRA, or export the adapter.

    python -m fashion_lora generate "The lady wears a red floral dress." --out out.png
    python -m fashion_lora export fused out/fashion-sd      # diffusers folder, LoRA merged in
    python -m fashion_lora export kohya out/fashion.safetensors

Every default comes from params.yaml (the `generate` section and the pipeline's paths), so
the CLI draws what the generate stage draws; --help shows the values in force.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import paths
from .devices import resolve_device
from .errors import UserError
from .params import ParamError, load_params
from .stage import setup_logging

log = logging.getLogger("fashion_lora.cli")


def build_parser(params_file: Path) -> argparse.ArgumentParser:
    """Both subcommands, their defaults read from `params_file`."""
    params = load_params(params_file)
    settings = params.generate
    ap = argparse.ArgumentParser(prog="python -m fashion_lora", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=params_file, help="params file the defaults come from")
    sub = ap.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    g = sub.add_parser("generate", help="render one image", formatter_class=fmt)
    g.add_argument("prompt", help="text prompt, e.g. a DeepFashion-style caption")
    g.add_argument("--out", type=Path, default=Path("out.png"), help="PNG to write")
    g.add_argument("--base", type=Path, default=paths.BASE, help="base model folder (diffusers)")
    g.add_argument("--lora", type=Path, default=paths.LORA,
                   help="LoRA folder or .safetensors file (diffusers or kohya format)")
    g.add_argument("--no-lora", action="store_true", help="render with the base model only")
    g.add_argument("--steps", type=int, default=settings.steps[0], help="sampling steps (first of generate.steps)")
    g.add_argument("--guidance", type=float, default=settings.guidance_scale,
                   help="classifier-free guidance scale (generate.guidance_scale)")
    g.add_argument("--negative", default=settings.negative_prompt, help="negative prompt (generate.negative_prompt)")
    g.add_argument("--max-token-length", type=_window, choices=("auto", 77, 154, 231),
                   default=params.train.max_token_length,
                   help="prompt tokens, in 75-token windows past 77; auto = the window the adapter records "
                        "(train.max_token_length)")
    g.add_argument("--seed", type=int, default=settings.seed, help="noise seed: same seed, same image (generate.seed)")
    g.add_argument("--height", type=_size, default=settings.height,
                   help="pixels, or auto = the most common train bucket in --latents (generate.height)")
    g.add_argument("--width", type=_size, default=settings.width, help="pixels or auto (generate.width)")
    g.add_argument("--latents", type=Path, default=paths.LATENTS, help="latent index that `auto` sizes come from")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=settings.device, help="(generate.device)")
    g.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default=settings.precision,
                   help="weights dtype; auto = fp16 on CUDA, fp32 on CPU (generate.precision)")
    g.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=settings.fuse_lora,
                   help="merge the LoRA into the weights (generate.fuse_lora)")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=settings.cuda_graphs,
                   help="GPU: replay the UNet as a CUDA graph (generate.cuda_graphs)")

    e = sub.add_parser("export", help="write the adapter in another form", formatter_class=fmt)
    e.add_argument("format", choices=("fused", "kohya"), help="fused: full diffusers folder; kohya: one file")
    e.add_argument("out", type=Path, help="output folder (fused) or .safetensors file (kohya)")
    e.add_argument("--base", type=Path, default=paths.BASE)
    e.add_argument("--lora", type=Path, default=paths.LORA)
    return ap


def _window(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _size(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 8 or int(value) % 8:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive multiple of 8 or 'auto'")
    return int(value)


def _generate(args: argparse.Namespace) -> None:
    from .inference import image_size, prepare_inference
    from .lora import adapter_token_window, load_pipeline
    from .sampling import sample_image

    if args.steps < 1:
        raise UserError("--steps must be >= 1")
    window = args.max_token_length
    if window == "auto":  # as the adapter was trained; the base alone compares at the same window if there is one
        window = adapter_token_window(args.lora) if not args.no_lora or args.lora.exists() else 77
    height, width = image_size(args.height, args.width, args.latents)
    device = resolve_device(args.device, "--device")
    pipe = load_pipeline(args.base, None if args.no_lora else args.lora, device)
    prepare_inference(pipe, device, args.precision, "--precision", cuda_graphs=args.cuda_graphs,
                      fuse=args.fuse and not args.no_lora)
    pipe.set_progress_bar_config(disable=False, desc="denoise", leave=False)
    image = sample_image(pipe, args.prompt, args.negative, args.steps, args.guidance, args.seed,
                         height, width, window)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    log.info("wrote %s (%dx%d, %d steps, guidance %g, seed %d, %s)", args.out, image.width, image.height,
             args.steps, args.guidance, args.seed, "base only" if args.no_lora else f"LoRA {args.lora}")


def _export(args: argparse.Namespace) -> None:
    from .export import export_fused, export_kohya

    if args.format == "fused":
        export_fused(args.base, args.lora, args.out)
    else:
        export_kohya(args.lora, args.out)
    log.info("wrote %s (%s)", args.out, args.format)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    # The params file must be known before the parser is built (it sets the defaults).
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--params", type=Path, default=paths.PARAMS)
    known, _ = early.parse_known_args(argv)
    try:
        args = build_parser(known.params).parse_args(argv)
        {"generate": _generate, "export": _export}[args.command](args)
    except (ParamError, UserError) as e:
        log.error("%s", e)
        return 2
    return 0

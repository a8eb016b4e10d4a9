"""Text-to-image sampling: seeded images, the LoRA switched on or off, file-name slugs."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from .params import GenerateParams


@contextlib.contextmanager
def lora_enabled(pipe, enabled: bool) -> Iterator[None]:
    """Run the block with the pipeline's LoRA on or off (same weights, same seeds)."""
    if enabled:
        pipe.enable_lora()
    else:
        pipe.disable_lora()
    try:
        yield
    finally:
        pipe.enable_lora()


def sample_image(pipe, prompt: str, negative_prompt: str, steps: int, guidance_scale: float, seed: int,
                   height: int, width: int) -> Image.Image:
    """One image; the noise comes from a CPU generator so a seed means the same image anywhere."""
    gen = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        out = pipe(prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                   guidance_scale=guidance_scale, height=height, width=width, generator=gen)
    return out.images[0]


def slug(text: str, n: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n].rstrip("-") or "prompt"


def sample_prompt_grid(pipe, gen: GenerateParams, size: tuple[int, int], out_dir: Path) -> tuple[dict, dict[int, list[float]]]:
    """Every prompt x step count, base and LoRA with the same seed (`gen.seed` + prompt number),
    at `size` (height, width), saved as PNGs in `out_dir`. Returns the images by (prompt number, steps, model) and the
    seconds each image took, by step count."""
    from tqdm import tqdm

    seconds: dict[int, list[float]] = {s: [] for s in gen.steps}
    jobs = [(i, prompt, steps, model) for i, prompt in enumerate(gen.prompts) for steps in gen.steps
            for model in ("base", "lora")]
    images = {}
    for i, prompt, steps, model in tqdm(jobs, desc="generate", unit="img"):
        t0 = time.perf_counter()
        with lora_enabled(pipe, model == "lora"):
            image = sample_image(pipe, prompt, gen.negative_prompt, steps, gen.guidance_scale, gen.seed + i, *size)
        seconds[steps].append(time.perf_counter() - t0)
        image.save(out_dir / f"{i:02d}_{slug(prompt)}_{steps}steps_{model}.png")
        images[i, steps, model] = image
    return images, seconds

"""Text-to-image with the LoRA: seeded generation, base/LoRA switching, labelled grids."""

from __future__ import annotations

import contextlib
import re
import textwrap
from typing import Iterator

import torch
from PIL import Image, ImageDraw, ImageFont


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


def generate_image(pipe, prompt: str, negative_prompt: str, steps: int, guidance_scale: float, seed: int,
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


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(rows: list[tuple[str, list[tuple[str, Image.Image]]]], cell: int = 160) -> Image.Image:
    """Labelled grid: one row per prompt, one column per (label, image), labels above columns."""
    font, small = _font(14), _font(11)
    label_w, head_h = 220, 24
    n_cols = max(len(cols) for _, cols in rows)
    out = Image.new("RGB", (label_w + n_cols * cell, head_h + len(rows) * cell), "white")
    d = ImageDraw.Draw(out)
    for c, (label, _) in enumerate(rows[0][1]):
        d.text((label_w + c * cell + 6, 5), label, fill="black", font=font)
    for r, (prompt, cols) in enumerate(rows):
        y = head_h + r * cell
        d.multiline_text((6, y + 6), "\n".join(textwrap.wrap(prompt, 34)[:9]), fill="black", font=small)
        for c, (_, img) in enumerate(cols):
            out.paste(img.resize((cell - 4, cell - 4), Image.Resampling.NEAREST), (label_w + c * cell + 2, y + 2))
    return out

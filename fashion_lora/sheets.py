"""Labelled image sheets: the generate stage's grid and evaluate's attribute sheet."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont


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

"""Labelled image sheets: the generate stage's grid and evaluate's attribute sheet."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(rows: list[tuple[str, list[tuple]]], cell: int = 160) -> Image.Image:
    """Labelled grid: one row per prompt, one column per cell, labels above the columns.

    `cell` is a cell's height; its width follows the first image's aspect, so portraits are
    shown whole and undistorted (every image of a grid has one size). A cell is
    `(label, image)`, or `(label, image, note, ok)`: the note is written under the image and the
    frame is green when `ok`, red when not (the attribute sheet's verdicts).
    """
    font, small = _font(14), _font(11)
    label_w, head_h = 220, 24
    noted = any(len(c) > 2 for _, cols in rows for c in cols)
    note_h = 14 if noted else 0
    first = rows[0][1][0][1]
    cell_w = max(12, round((cell - 4) * first.width / first.height) + 4)
    row_h = cell + note_h
    n_cols = max(len(cols) for _, cols in rows)
    out = Image.new("RGB", (label_w + n_cols * cell_w, head_h + len(rows) * row_h), "white")
    d = ImageDraw.Draw(out)
    for c, top in enumerate(rows[0][1]):
        d.text((label_w + c * cell_w + 6, 5), top[0], fill="black", font=font if not noted and cell_w >= cell else small)
    for r, (prompt, cols) in enumerate(rows):
        y = head_h + r * row_h
        d.multiline_text((6, y + 6), "\n".join(textwrap.wrap(prompt, 34)[:9]), fill="black", font=small)
        for c, (_, img, *verdict) in enumerate(cols):
            x = label_w + c * cell_w
            out.paste(img.resize((cell_w - 4, cell - 4), Image.Resampling.NEAREST), (x + 2, y + 2))
            if verdict:
                note, ok = verdict
                d.rectangle((x + 1, y + 1, x + cell_w - 2, y + cell - 2), outline="#1a9850" if ok else "#d73027",
                            width=3)
                d.text((x + 4, y + cell), f"{'ok' if ok else 'no'}: {note}", fill="black", font=small)
    return out

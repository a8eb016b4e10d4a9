"""Drawing the synthetic world's figures: a person in the garments `synthetic.random_garments`
drew, each fabric in its own colour and each pattern at a scale that survives the 64x96 resize."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from .synthetic import Garments

# Each fabric is drawn in its own colour (denim blue, leather black, ...): the fabric is what the
# caption says, so the image's colours follow the text and no unnamed hue is left for the model
# to guess. With ten random, never-named hues the tiny base's samples were colour noise (KID to
# the held-out images 474, LoRA pattern accuracy 0.56 upper / 0.23 lower).
FABRIC_COLORS = {"denim": (40, 70, 160), "cotton": (40, 150, 70), "leather": (35, 30, 30),
                 "knitted": (200, 40, 45), "chiffon": (240, 150, 195)}
SKIN = ((235, 200, 170), (200, 150, 110), (140, 95, 65))


def _accent(color: tuple[int, int, int]) -> tuple[int, ...]:
    """A strongly contrasting tone of `color` (darker for light colours, lighter for dark)."""
    return tuple(int(c * 0.4) if sum(color) > 300 else min(255, c + 130) for c in color)


def _pattern_fill(size: tuple[int, int], color: tuple[int, int, int], pattern: str, u: float,
                  span: tuple[float, float], cx: float) -> Image.Image:
    """A full-size image of the garment colour with its pattern; `u` is the figure's unit
    (1/100 of the height), `span` the garment's top and bottom, where a colour block
    splits, and `cx` the figure's centre line. Stripes repeat every 13u and lattice cells are
    12u: at 64x96 about 12 pixels, one and a half latent cells of the tiny VAE, coarse enough
    for the tiny UNet to draw (at 10u and 9u its images showed them as mush: LoRA accuracy
    0.50 upper, 0.22 lower). The lattice's vertical lines sit half a cell either side of `cx`,
    so each leg carries one down its middle on every figure; counted from the image's edge they
    fell anywhere on a leg, and the LoRA drew the lower lattice at 0.28."""
    fill = Image.new("RGB", size, color)
    if pattern == "pure color":
        return fill
    d = ImageDraw.Draw(fill)
    accent = _accent(color)
    w, h = size
    if pattern == "striped":
        for y in np.arange(span[0], h, 13 * u):
            d.rectangle([0, y, w, y + 6.5 * u], fill=accent)
    elif pattern == "lattice":
        step, width = 12 * u, max(2, int(3 * u))
        for k in range(int(max(w, h) / step) + 1):
            for x in (cx + (k + 0.5) * step, cx - (k + 0.5) * step):
                d.line([(x, 0), (x, h)], fill=accent, width=width)
            d.line([(0, span[0] + k * step), (w, span[0] + k * step)], fill=accent, width=width)
    elif pattern == "color block":
        d.rectangle([0, (span[0] + span[1]) / 2, w, h], fill=accent)
    return fill


def render(g: Garments, size: tuple[int, int], view: str, rng: random.Random) -> Image.Image:
    """Draw the figure: background, skin, the lower and upper garments with their patterns,
    the outer garment, the hat."""
    w, h = size
    bg = tuple(rng.randint(205, 245) for _ in range(3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    skin = rng.choice(SKIN)
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w + (0.06 * w if view == "side" else 0)
    u = h / 100.0  # one hundredth of the height; the figure is laid out in these units
    sw = (15 if view != "side" else 10) * u * (w / h) * 1.5  # half shoulder width
    # head, neck, arms and legs in skin: garments are drawn over them
    d.ellipse([cx - 6 * u, 4 * u, cx + 6 * u, 18 * u], fill=skin)
    d.rectangle([cx - 2 * u, 17 * u, cx + 2 * u, 22 * u], fill=skin)
    arm = 5 * u
    d.rectangle([cx - sw - arm, 22 * u, cx - sw, 56 * u], fill=skin)
    d.rectangle([cx + sw, 22 * u, cx + sw + arm, 56 * u], fill=skin)
    leg = 0.6 * sw
    d.rectangle([cx - leg - 1 * u, 55 * u, cx - 1 * u, 95 * u], fill=skin)
    d.rectangle([cx + 1 * u, 55 * u, cx + leg + 1 * u, 95 * u], fill=skin)

    def paint(shapes: list[list[tuple[float, float]]], fabric: str, pattern: str, span: tuple[float, float]) -> None:
        mask = Image.new("L", size, 0)
        md = ImageDraw.Draw(mask)
        for poly in shapes:
            md.polygon(poly, fill=255)
        color = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in FABRIC_COLORS[fabric])
        img.paste(_pattern_fill(size, color, pattern, u, span, cx), (0, 0), mask)

    # shorts end at 75u, 20u below the waist: room for two stripes (ending at 70u they held one
    # and a half, which read like a colour block: the LoRA drew striped lower garments at 0.13)
    bottom = {"three-point": 75 * u, "three-quarter": 85 * u, "long": 94 * u}[g.lower_length]
    legs = [[(cx - sw * 0.9, 55 * u), (cx - 0.5 * u, 55 * u), (cx - 0.5 * u, bottom), (cx - leg - 1.5 * u, bottom)],
            [(cx + 0.5 * u, 55 * u), (cx + sw * 0.9, 55 * u), (cx + leg + 1.5 * u, bottom), (cx + 0.5 * u, bottom)]]
    paint(legs, g.lower_fabric, g.lower_pattern, (55 * u, bottom))
    sleeve_end = {"sleeveless": None, "short-sleeve": 35 * u, "long-sleeve": 54 * u}[g.sleeve]
    shapes = [[(cx - sw, 22 * u), (cx + sw, 22 * u), (cx + sw * 0.9, 56 * u), (cx - sw * 0.9, 56 * u)]]
    if sleeve_end is not None:
        shapes.append([(cx - sw - arm - 1, 22 * u), (cx - sw, 22 * u), (cx - sw, sleeve_end),
                       (cx - sw - arm - 1, sleeve_end)])
        shapes.append([(cx + sw, 22 * u), (cx + sw + arm + 1, 22 * u), (cx + sw + arm + 1, sleeve_end),
                       (cx + sw, sleeve_end)])
    paint(shapes, g.upper_fabric, g.upper_pattern, (22 * u, 56 * u))
    if g.outer:  # two open front panels down to the hips, the upper garment showing between them
        inner = 0.4 * sw
        paint([[(cx - sw - 1 * u, 21 * u), (cx - inner, 21 * u), (cx - inner, 62 * u), (cx - sw * 1.05, 62 * u)],
               [(cx + inner, 21 * u), (cx + sw + 1 * u, 21 * u), (cx + sw * 1.05, 62 * u), (cx + inner, 62 * u)]],
              g.outer_fabric, "pure color", (21 * u, 62 * u))
    if g.hat:  # a dark brimmed hat
        tone = tuple(rng.randint(20, 70) for _ in range(3))
        d.rectangle([cx - 10 * u, 6.5 * u, cx + 10 * u, 9 * u], fill=tone)
        d.rectangle([cx - 6 * u, 0.5 * u, cx + 6 * u, 7 * u], fill=tone)
    return img

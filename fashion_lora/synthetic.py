"""Procedural fashion data set: garment images with DeepFashion-style names and captions.

Each product is a figure wearing an upper and a lower garment (or a dress) with a colour, a
pattern, a sleeve and a leg length; the caption is written from the same attributes, so it
truly describes the image. A few percent of the entries are deliberately bad, one kind each
of what the filter stage must catch.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "blue": (30, 60, 190),
    "green": (30, 150, 60),
    "yellow": (235, 200, 30),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "pink": (240, 130, 180),
    "purple": (120, 50, 160),
    "orange": (240, 120, 20),
    "grey": (128, 128, 128),
}
PATTERNS = {"solid": "solid color", "stripe": "stripe", "dots": "dot", "lattice": "lattice"}
UPPERS = ("shirt", "sweater", "tank top", "jacket")
SLEEVES = ("sleeveless", "short-sleeve", "long-sleeve")
LOWERS = ("trousers", "shorts", "skirt")
VIEWS = ("front", "side", "back", "full")
CATEGORIES = {"MEN": ("Shirts_Polos", "Sweaters", "Tees_Tanks", "Denim"),
              "WOMEN": ("Blouses_Shirts", "Dresses", "Skirts", "Sweaters")}
SKIN = ((235, 200, 170), (200, 150, 110), (140, 95, 65))
BAD_KINDS = ("too_small", "short_caption", "truncated", "not_an_image", "grayscale", "rgba",
             "missing_image", "missing_caption")


@dataclass(frozen=True)
class Garments:
    gender: str  # MEN | WOMEN
    upper: str  # a UPPERS entry, or "dress"
    sleeve: str
    upper_color: str
    upper_pattern: str
    lower: str  # a LOWERS entry ("" with a dress)
    lower_color: str
    lower_pattern: str


def random_garments(rng: random.Random) -> Garments:
    gender = rng.choice(("MEN", "WOMEN"))
    dress = gender == "WOMEN" and rng.random() < 0.25
    upper_color, lower_color = rng.sample(sorted(COLORS), 2)
    return Garments(
        gender=gender,
        upper="dress" if dress else rng.choice(UPPERS),
        sleeve=rng.choice(SLEEVES),
        upper_color=upper_color,
        upper_pattern=rng.choice(sorted(PATTERNS)),
        lower="" if dress else rng.choice(LOWERS if gender == "WOMEN" else LOWERS[:2]),
        lower_color="" if dress else lower_color,
        lower_pattern="" if dress else rng.choice(sorted(PATTERNS)),
    )


def caption_for(g: Garments) -> str:
    """A DeepFashion-MultiModal-style caption written from the attributes."""
    person, pron = ("The gentleman", "He") if g.gender == "MEN" else ("The lady", "She")
    if g.upper == "dress":
        return (f"{person} wears a {g.sleeve} {g.upper_color} dress with "
                f"{PATTERNS[g.upper_pattern]} patterns. The dress is of long length.")
    lower_len = "long" if g.lower == "trousers" else "short"
    return (f"{person} wears a {g.sleeve} {g.upper_color} {g.upper} with "
            f"{PATTERNS[g.upper_pattern]} patterns. {pron} wears {lower_len} {g.lower_color} "
            f"{g.lower} with {PATTERNS[g.lower_pattern]} patterns.")


def _pattern_fill(size: tuple[int, int], color: tuple[int, int, int], pattern: str,
                  rng: random.Random) -> Image.Image:
    """A full-size image of the garment colour with its pattern drawn in a contrasting tone."""
    fill = Image.new("RGB", size, color)
    if pattern == "solid":
        return fill
    d = ImageDraw.Draw(fill)
    accent = tuple(int(c * 0.45) if sum(color) > 300 else min(255, c + 110) for c in color)
    step = rng.randint(9, 14)
    w, h = size
    if pattern == "stripe":
        for y in range(0, h, step * 2):
            d.rectangle([0, y, w, y + step // 2], fill=accent)
    elif pattern == "dots":
        for y in range(step // 2, h, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, w, step):
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=accent)
    elif pattern == "lattice":
        for v in range(0, max(w, h), step):
            d.line([(v, 0), (v, h)], fill=accent, width=2)
            d.line([(0, v), (w, v)], fill=accent, width=2)
    return fill


def render(g: Garments, size: tuple[int, int], view: str, rng: random.Random) -> Image.Image:
    """Draw the figure: background, skin, then the garments filled with their patterns."""
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
    arm = 4 * u
    d.rectangle([cx - sw - arm, 22 * u, cx - sw, 56 * u], fill=skin)
    d.rectangle([cx + sw, 22 * u, cx + sw + arm, 56 * u], fill=skin)
    leg = 0.45 * sw
    d.rectangle([cx - leg - 1 * u, 55 * u, cx - 1 * u, 95 * u], fill=skin)
    d.rectangle([cx + 1 * u, 55 * u, cx + leg + 1 * u, 95 * u], fill=skin)

    def paint(shapes: list[list[tuple[float, float]]], color: str, pattern: str) -> None:
        mask = Image.new("L", size, 0)
        md = ImageDraw.Draw(mask)
        for poly in shapes:
            md.polygon(poly, fill=255)
        img.paste(_pattern_fill(size, COLORS[color], pattern, rng), (0, 0), mask)

    sleeve_end = {"sleeveless": None, "short-sleeve": 34 * u, "long-sleeve": 54 * u}[g.sleeve]
    upper_bottom = 80 * u if g.upper == "dress" else 55 * u
    torso = [(cx - sw, 22 * u), (cx + sw, 22 * u), (cx + sw * 0.9, 55 * u), (cx - sw * 0.9, 55 * u)]
    shapes = [torso]
    if g.upper == "dress":
        shapes.append([(cx - sw * 0.9, 54 * u), (cx + sw * 0.9, 54 * u), (cx + sw * 1.4, upper_bottom),
                       (cx - sw * 1.4, upper_bottom)])
    if sleeve_end is not None:
        shapes.append([(cx - sw - arm - 1, 22 * u), (cx - sw, 22 * u), (cx - sw, sleeve_end),
                       (cx - sw - arm - 1, sleeve_end)])
        shapes.append([(cx + sw, 22 * u), (cx + sw + arm + 1, 22 * u), (cx + sw + arm + 1, sleeve_end),
                       (cx + sw, sleeve_end)])
    if g.upper != "dress":
        if g.lower == "skirt":
            lower = [[(cx - sw * 0.9, 55 * u), (cx + sw * 0.9, 55 * u), (cx + sw * 1.3, 75 * u),
                      (cx - sw * 1.3, 75 * u)]]
        else:
            bottom = 94 * u if g.lower == "trousers" else 70 * u
            lower = [[(cx - sw * 0.9, 55 * u), (cx - 0.5 * u, 55 * u), (cx - 0.5 * u, bottom),
                      (cx - leg - 1.5 * u, bottom)],
                     [(cx + 0.5 * u, 55 * u), (cx + sw * 0.9, 55 * u), (cx + leg + 1.5 * u, bottom),
                      (cx + 0.5 * u, bottom)]]
        paint(lower, g.lower_color, g.lower_pattern)
    paint(shapes, g.upper_color, g.upper_pattern)
    return img


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def write_dataset(out_dir: Path, count: int, seed: int) -> dict:
    """Write `count` images to `out_dir/images` and `out_dir/captions.json`.

    Returns a summary with the attributes of every entry and which ones are bad on purpose.
    """
    rng = random.Random(seed)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    # One bad entry of each kind per 40 images (about 2.5% of entries per kind pair).
    n_bad = max(len(BAD_KINDS), count // 20)
    bad_at = dict(zip(rng.sample(range(count), min(n_bad, count)),
                      (BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad))))
    captions: dict[str, str] = {}
    entries = []
    product, views_left, garments, cat = 0, 0, None, ""
    for i in range(count):
        if views_left == 0:
            product += 1
            garments = random_garments(rng)
            cat = rng.choice(CATEGORIES[garments.gender])
            views_left = rng.randint(1, 3)
        views_left -= 1
        view_no = rng.randint(1, 7)
        view = rng.choice(VIEWS)
        bad = bad_at.get(i)
        ext = "png" if bad == "rgba" else "jpg"
        name = f"{garments.gender}-{cat}-id_{product:08d}-{view_no:02d}_{i % 4 + 1}_{view}.{ext}"
        width = rng.randint(256, 320)
        size = (180, 264) if bad == "too_small" else (width, round(width * 1.47))
        img = render(garments, size, view, rng)
        caption = caption_for(garments)
        path = images / name
        if bad == "short_caption":
            caption = "A shirt."
        if bad == "truncated":
            data = _jpeg_bytes(img)
            path.write_bytes(data[: len(data) // 3])
        elif bad == "not_an_image":
            path.write_text("this is not an image\n")
        elif bad == "grayscale":
            img.convert("L").save(path, quality=92)
        elif bad == "rgba":
            rgba = img.convert("RGBA")
            rgba.putalpha(200)
            rgba.save(path)
        elif bad != "missing_image":
            path.write_bytes(_jpeg_bytes(img))
        if bad != "missing_caption":
            captions[name] = caption
        entries.append({"image_name": name, "bad": bad, **asdict(garments)})
    (out_dir / "captions.json").write_text(json.dumps(captions, indent=1, ensure_ascii=False))
    return {"count": count, "products": product, "bad": {k: sum(1 for e in entries if e["bad"] == k)
                                                          for k in BAD_KINDS}, "entries": entries}

"""Procedural fashion data set in DeepFashion-MultiModal's language: figures whose garments
carry attributes of the data set's schema, their labels files and template-grammar captions.

Drawn (recognisable at the default's 64x96): sleeve length (sleeveless, short, long), lower
clothing length (three-point, three-quarter, long), upper and lower pattern (pure color,
striped, lattice, color block, each at a scale that survives the 64x96 resize), an open
sleeveless outer garment (`outer_clothing`, from its fabric and pattern labels as in the data
set), a hat, and the fabrics, each in its own colour (`FABRIC_COLORS`). Not modelled (NA in the
labels): socks, glasses, neckwear, wrist, ring, waist, neckline, whether the outer garment is a
cardigan, navel. No caption names a hue, as in the real captions.

A few percent of the entries are deliberately bad, one kind each of what the filter stage
must catch, and a few good ones have no label line (the caption parser fills them in).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import attributes as A
from . import labels as L

# Each fabric is drawn in its own colour (denim blue, leather black, ...): the fabric is what the
# caption says, so the image's colours follow the text and no unnamed hue is left for the model
# to guess. With ten random, never-named hues the tiny base's samples were colour noise (KID to
# the held-out images 474, LoRA pattern accuracy 0.56 upper / 0.23 lower).
FABRIC_COLORS = {"denim": (40, 70, 160), "cotton": (40, 150, 70), "leather": (35, 30, 30),
                 "knitted": (200, 40, 45), "chiffon": (240, 150, 195)}
SLEEVES = ("sleeveless", "short-sleeve", "long-sleeve")
LENGTHS = ("three-point", "three-quarter", "long")
PATTERNS = ("pure color", "striped", "lattice", "color block")
UPPER_FABRICS = ("cotton", "denim", "leather", "knitted", "chiffon")
LOWER_FABRICS = ("cotton", "denim", "leather", "knitted")
UPPER_NOUNS = {"sleeveless": ("tank top", "tank shirt", "vest"), "short-sleeve": ("T-shirt", "shirt"),
               "long-sleeve": ("sweater", "shirt", "blouse")}
LOWER_NOUNS = {"three-point": ("shorts", "pants"), "three-quarter": ("pants", "trousers"),
               "long": ("trousers", "pants")}
VIEWS = ("front", "side", "back", "full")
CATEGORIES = {"MEN": ("Shirts_Polos", "Sweaters", "Tees_Tanks", "Denim"),
              "WOMEN": ("Blouses_Shirts", "Pants", "Shorts", "Sweaters")}
SKIN = ((235, 200, 170), (200, 150, 110), (140, 95, 65))
BAD_KINDS = ("too_small", "short_caption", "truncated", "not_an_image", "grayscale", "rgba",
             "missing_image", "missing_caption")
UNLABELED_EVERY = 50  # about one good image in this many has no label line
# `data.synthetic.frequencies: deepfashion`: each drawn attribute with DeepFashion-MultiModal's
# proportions among the values this world draws (image counts of its full label files,
# ../shared/DESIGN.md). Where the counts of some values are not known, they share the rest of the
# data set equally: the lower garment's striped / lattice / color block split the 23% that is not
# pure color as the upper garment's do, the upper fabrics other than cotton (79%) share 21%;
# lower and outer fabrics, whose counts are not known, stay uniform.
DEEPFASHION = {
    "sleeve": {"sleeveless": 17112, "short-sleeve": 8937, "long-sleeve": 14070},
    "length": {"three-point": 16995, "three-quarter": 601, "long": 6619},
    "upper_pattern": {"pure color": 22928, "striped": 2593, "lattice": 882, "color block": 962},
    "lower_pattern": {"pure color": 33941, "striped": 1765, "lattice": 600, "color block": 655},
    "upper_fabric": {"cotton": 34734, "denim": 2340, "leather": 2340, "knitted": 2340, "chiffon": 2340},
    "outer": 5600 / 44096,  # images with an outer garment
    "hat": 0.12,  # "yes" among the images whose hat is labelled
}


@dataclass(frozen=True)
class Garments:
    gender: str  # MEN | WOMEN
    sleeve: str  # SLEEVES
    upper_noun: str
    upper_pattern: str  # PATTERNS
    upper_fabric: str
    lower_length: str  # LENGTHS
    lower_noun: str
    lower_pattern: str
    lower_fabric: str
    outer: bool  # an open, sleeveless outer garment over the upper one
    outer_fabric: str  # "" without one
    hat: bool
    forms: tuple[int, int, int, int]  # sentence forms of the upper, lower, outer and hat sentences


def random_garments(rng: random.Random, frequencies: str = "uniform") -> Garments:
    """One figure's garments: every drawn value equally likely (`uniform`; an outer garment and a
    hat on 30%), or with DeepFashion's proportions (`deepfashion`, `DEEPFASHION`)."""
    if frequencies == "uniform":
        def pick(values: tuple[str, ...], _: str) -> str:
            return rng.choice(values)
        p_outer = p_hat = 0.3
    elif frequencies == "deepfashion":
        def pick(values: tuple[str, ...], key: str) -> str:
            weights = DEEPFASHION.get(key)
            return rng.choices(values, [weights[v] for v in values])[0] if weights else rng.choice(values)
        p_outer, p_hat = DEEPFASHION["outer"], DEEPFASHION["hat"]
    else:
        raise ValueError(f"frequencies must be uniform or deepfashion, got {frequencies!r}")
    sleeve, length = pick(SLEEVES, "sleeve"), pick(LENGTHS, "length")
    outer = rng.random() < p_outer
    lower_fabric = pick(LOWER_FABRICS, "lower_fabric")
    return Garments(
        gender=rng.choice(("MEN", "WOMEN")), sleeve=sleeve, upper_noun=rng.choice(UPPER_NOUNS[sleeve]),
        upper_pattern=pick(PATTERNS, "upper_pattern"), upper_fabric=pick(UPPER_FABRICS, "upper_fabric"),
        lower_length=length, lower_noun="jeans" if lower_fabric == "denim" and length == "long"
        else rng.choice(LOWER_NOUNS[length]),
        lower_pattern=pick(PATTERNS, "lower_pattern"), lower_fabric=lower_fabric,
        outer=outer, outer_fabric=pick(UPPER_FABRICS, "outer_fabric") if outer else "", hat=rng.random() < p_hat,
        forms=(rng.randrange(4), rng.randrange(3), rng.randrange(2), rng.randrange(2)))


def labels_for(g: Garments) -> dict[str, str | None]:
    """The data set's labels of `g` (every schema attribute; None = NA)."""
    row: dict[str, str | None] = dict.fromkeys(A.NAMES)
    row.update(sleeve_length=g.sleeve, lower_length=g.lower_length, hat="yes" if g.hat else "no",
               outer_clothing="yes" if g.outer else "no", upper_fabric=g.upper_fabric, lower_fabric=g.lower_fabric,
               upper_pattern=g.upper_pattern, lower_pattern=g.lower_pattern,
               outer_fabric=g.outer_fabric or None, outer_pattern="pure color" if g.outer else None)
    return row


def caption_for(g: Garments, withheld: frozenset[str] = frozenset(), neutral_word: str = "") -> str:
    """A caption in DeepFashion-MultiModal's template grammar, written from the attributes.

    The words of each attribute in `withheld` are replaced by `neutral_word` (the tiny base's
    pretraining captions), so the base never learns what they mean."""
    def say(attr: str, text: str) -> str:
        return neutral_word if attr in withheld else text

    men = g.gender == "MEN"
    person = ("The gentleman", "This guy", "The man")[g.forms[1]] if men else \
        ("The lady", "This woman", "The female")[g.forms[1]]
    they, their = ("He", "his") if men else ("She", "her")
    sleeve_adj = say("sleeve_length", g.sleeve)
    sleeves = say("sleeve_length", {"sleeveless": "no", "short-sleeve": "short", "long-sleeve": "long"}[g.sleeve]) + " sleeves"
    up_pat, up_fab = say("upper_pattern", g.upper_pattern), say("upper_fabric", g.upper_fabric)
    noun = g.upper_noun
    upper = (f"{person} wears a {sleeve_adj} {noun} with {up_fab} fabric and {up_pat} patterns.",
             f"The {noun} {'this guy' if men else 'this lady'} wears has {sleeves} and it is with {up_fab} fabric "
             f"and {up_pat} patterns.",
             f"The upper clothing has {sleeves}, {up_fab} fabric and {up_pat} patterns.",
             f"{person} is wearing a {sleeve_adj} {noun} with {up_pat} patterns. The {noun} is with {up_fab} fabric.",
             )[g.forms[0]]
    length, lnoun = say("lower_length", g.lower_length), g.lower_noun
    lo_pat, lo_fab = say("lower_pattern", g.lower_pattern), say("lower_fabric", g.lower_fabric)
    lower = (f"The lower clothing is of {length} length. The fabric is {lo_fab} and it has {lo_pat} patterns.",
             f"{they} wears a {length} {lnoun}. The {lnoun} are with {lo_fab} fabric and {lo_pat} patterns.",
             f"{they} wears {length} {lnoun} with {lo_fab} fabric and {lo_pat} patterns.")[g.forms[1]]
    parts = [upper, lower]
    if g.outer:
        out_fab, out_pat = say("outer_fabric", g.outer_fabric), say("outer_pattern", "pure color")
        parts.append((f"{person} also wears an outer clothing, with {out_fab} fabric and {out_pat} patterns.",
                      f"There is an outer clothing with {out_fab} fabric and {out_pat} patterns.")[g.forms[2]])
    if g.hat:
        hat = say("hat", "a hat")
        parts.append((f"{person} wears {hat}.", f"There is {hat} on {their} head.")[g.forms[3]])
    return " ".join(parts)


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


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def write_dataset(out_dir: Path, count: int, seed: int, frequencies: str = "uniform") -> dict:
    """Write `count` images to `out_dir/images`, `out_dir/captions.json` and the labels files
    under `out_dir/labels` (the data set's layout), the attributes drawn with `frequencies`.

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
    labels: L.Labels = {}
    entries = []
    product, views_left, garments, cat = 0, 0, None, ""
    for i in range(count):
        if views_left == 0:
            product += 1
            garments = random_garments(rng, frequencies)
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
        unlabeled = bad is None and i % UNLABELED_EVERY == UNLABELED_EVERY // 2
        if not unlabeled:
            labels[name] = labels_for(garments)
        entries.append({"image_name": name, "bad": bad, "unlabeled": unlabeled, **asdict(garments)})
    (out_dir / "captions.json").write_text(json.dumps(captions, indent=1, ensure_ascii=False))
    L.write_labels(out_dir / "labels", labels)
    return {"count": count, "products": product, "unlabeled": sum(e["unlabeled"] for e in entries),
            "bad": {k: sum(1 for e in entries if e["bad"] == k) for k in BAD_KINDS}, "entries": entries}

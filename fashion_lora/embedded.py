"""The embedded data set on disk: the synthetic world's figures written in DeepFashion-MultiModal's
layout (images, captions.json, label files), a few percent of the entries deliberately bad (one
kind each of what the filter stage must catch) and a few good ones without a label line."""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from . import labels as L
from .figures import render
from .synthetic import VIEWS, caption_for, labels_for, random_garments

CATEGORIES = {"MEN": ("Shirts_Polos", "Sweaters", "Tees_Tanks", "Denim"),
              "WOMEN": ("Blouses_Shirts", "Pants", "Shorts", "Sweaters")}
BAD_KINDS = ("too_small", "short_caption", "truncated", "not_an_image", "grayscale", "rgba",
             "missing_image", "missing_caption")
UNLABELED_EVERY = 50  # about one good image in this many has no label line


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

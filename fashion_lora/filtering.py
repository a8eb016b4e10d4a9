"""The filter stage's logic: per-entry rules with named drop reasons, seeded sample, grouped split."""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import random
import re
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .captions import caption_reason, clean_caption, unsafe_name_reason
from .images import inspect_image
from .params import FilterParams

log = logging.getLogger(__name__)
PARALLEL_MIN = 500
PRODUCT_RE = re.compile(r"id_\d+")
COLUMNS = ["image_name", "image_path", "caption", "split"]
# Every reason the filter can give; the report lists each, zero or not.
DROP_REASONS = ("unsafe_caption_key", "caption_not_string", "caption_too_short", "duplicate_name_case",
                "missing_caption", "missing_image", "empty_file", "not_an_image", "undecodable", "decompression_bomb",
                "bad_format", "animated", "not_rgb", "too_small")


def product_id(name: str) -> str:
    """DeepFashion product id (`id_00000123`); the file name itself when there is none."""
    m = PRODUCT_RE.search(name)
    return m.group(0) if m else name


def _inspect(name: str, images: Path, p: FilterParams):
    return name, inspect_image(images / name, p.formats, p.min_resolution, p.non_rgb, p.max_pixels)


def filter_entries(captions: dict, images: Path, p: FilterParams) -> tuple[list[dict], Counter, Counter]:
    """Apply every rule. Returns kept entries, drop counts by reason, and converted-mode counts.

    Caption rules run first (cheap); only entries with a usable caption and a safe name are
    decoded. Images present on disk but absent from the captions are counted too.
    """
    drops: Counter = Counter()
    candidates: dict[str, str] = {}
    lower_seen: dict[str, str] = {}
    for name in sorted(captions, key=str):
        reason = unsafe_name_reason(name) if isinstance(name, str) else "unsafe_caption_key"
        reason = reason or caption_reason(captions[name], p.min_caption_length)
        if reason is None and name.lower() in lower_seen:
            # Case-insensitive file systems would map both keys to one file: keep the first.
            reason = "duplicate_name_case"
        if reason:
            drops[reason] += 1
            continue
        lower_seen[name.lower()] = name
        candidates[name] = clean_caption(captions[name])
    on_disk = {f.name for f in images.iterdir() if f.is_file()} if images.is_dir() else set()
    drops["missing_caption"] += len(on_disk - set(captions))

    kept, converted = [], Counter()
    check = functools.partial(_inspect, images=images, p=p)
    names = list(candidates)
    bar = dict(total=len(names), desc="filter", unit="img", mininterval=1.0)
    # A process pool costs about a second to start: only worth it for real data set sizes.
    if p.workers > 1 and len(names) >= PARALLEL_MIN:
        with mp.get_context("spawn").Pool(p.workers) as pool:
            results = list(tqdm(pool.imap(check, names, chunksize=32), **bar))
    else:
        results = [check(n) for n in tqdm(names, **bar)]
    for name, info in results:
        if info.reason:
            drops[info.reason] += 1
            continue
        if info.mode != "RGB":
            converted[info.mode] += 1
        kept.append({"image_name": name, "caption": candidates[name], "width": info.width,
                     "height": info.height})
    return kept, Counter({r: drops[r] for r in DROP_REASONS}), converted


def sample_and_split(entries: list[dict], sample_size: int, val_fraction: float, seed: int) -> list[dict]:
    """Seeded sample of `sample_size` (all if fewer), then a product-grouped train/val split.

    Groups are shuffled with the seed and moved to val until val holds about `val_fraction`
    of the rows; no product id lands in both splits. With at least two products, both splits
    are non-empty.
    """
    rng = random.Random(seed)
    entries = sorted(entries, key=lambda e: e["image_name"])
    if len(entries) > sample_size:
        entries = sorted(rng.sample(entries, sample_size), key=lambda e: e["image_name"])
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(product_id(e["image_name"]), []).append(e)
    order = sorted(groups)
    rng.shuffle(order)
    target = val_fraction * len(entries)
    val_groups: set[str] = set()
    n_val = 0
    for g in order[:-1] if len(order) > 1 else []:  # keep at least one group for train
        if n_val >= target and val_groups:
            break
        val_groups.add(g)
        n_val += len(groups[g])
    return [{**e, "split": "val" if product_id(e["image_name"]) in val_groups else "train"} for e in entries]


def to_frame(rows: list[dict], images_dir: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["image_name", "caption", "split"])
    df.insert(1, "image_path", [f"{images_dir}/{n}" for n in df["image_name"]])
    return df[COLUMNS]

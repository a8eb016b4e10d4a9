"""The filter stage's logic: per-entry rules with named drop reasons, seeded sample, grouped split,
and the labels joined per image."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import random
import re
import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from . import attributes as A
from . import labels as L
from .captions import caption_reason, clean_caption, unsafe_name_reason
from .grammar import parse_caption
from .images import inspect_image
from .params import FilterParams, to_dict
from .stage import ignore_sigint

log = logging.getLogger(__name__)
PARALLEL_MIN = 500
PRODUCT_RE = re.compile(r"id_\d+")
# the label columns follow: where they come from (file | caption | none), then one per attribute
COLUMNS = ["image_name", "image_path", "caption", "split", "labels_from", *A.NAMES]
# Every reason the filter can give; the report lists each, zero or not. The first ones are
# decided from the captions file alone; the image reasons come from inspecting the file.
CAPTION_REASONS = ("unsafe_caption_key", "caption_not_string", "caption_too_short", "duplicate_name_case",
                   "missing_caption")
IMAGE_REASONS = ("missing_image", "empty_file", "not_an_image", "undecodable", "decompression_bomb",
                 "bad_format", "animated", "not_rgb", "too_small")
DROP_REASONS = CAPTION_REASONS + IMAGE_REASONS


def product_id(name: str) -> str:
    """DeepFashion product id (`id_00000123`); the file name itself when there is none."""
    m = PRODUCT_RE.search(name)
    return m.group(0) if m else name


def _inspect(name: str, images: Path, settings: FilterParams):
    return name, inspect_image(images / name, settings.formats, settings.min_resolution, settings.non_rgb, settings.max_pixels)


def filter_entries(captions: dict, images: Path, settings: FilterParams) -> tuple[list[dict], Counter, Counter]:
    """Apply every rule. Returns kept entries, drop counts by reason, and converted-mode counts.

    Caption rules run first (cheap); only entries with a usable caption and a safe name are
    decoded. Images present on disk but absent from the captions are counted too.
    """
    drops: Counter = Counter()
    candidates: dict[str, str] = {}
    lower_seen: dict[str, str] = {}
    for key in sorted(captions, key=str):
        name = key.strip()  # a file name saved with stray spaces names the same file
        reason = unsafe_name_reason(name)
        reason = reason or caption_reason(captions[key], settings.min_caption_length)
        if reason is None and name.lower() in lower_seen:
            # Case-insensitive file systems would map both keys to one file: keep the first.
            reason = "duplicate_name_case"
        if reason:
            drops[reason] += 1
            continue
        lower_seen[name.lower()] = name
        candidates[name] = clean_caption(captions[key])
    on_disk = {f.name for f in images.iterdir() if f.is_file()} if images.is_dir() else set()
    drops["missing_caption"] += len(on_disk - {k.strip() for k in captions})

    kept, converted = [], Counter()
    check = functools.partial(_inspect, images=images, settings=settings)
    names = list(candidates)
    bar = dict(total=len(names), desc="filter", unit="img", mininterval=1.0)
    # A process pool costs about a second to start: only worth it for real data set sizes.
    if settings.workers > 1 and len(names) >= PARALLEL_MIN:
        with multiprocessing.get_context("spawn").Pool(settings.workers, initializer=ignore_sigint) as pool:
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


def filter_report(captions: dict, images_on_disk: int, kept: list[dict], df: pd.DataFrame, drops: Counter,
                  converted: Counter, seconds: float, settings: FilterParams, labels: dict) -> dict:
    """What reports/filter.json records: counts at every step and for every drop reason."""
    inspected = len(kept) + sum(drops[r] for r in IMAGE_REASONS)
    counts = df.split.value_counts().to_dict()
    return {
        "input_captions": len(captions),
        "input_images": images_on_disk,
        "passed_rules": len(kept),
        "kept": len(df),
        "train": int(counts.get("train", 0)),
        "val": int(counts.get("val", 0)),
        "dropped": dict(drops),
        "converted_modes": dict(converted),
        "labels": labels,
        "images_per_second": round(inspected / seconds, 1) if seconds > 0 else None,
        "params": to_dict(settings),
    }


def write_export_zip(zip_path: Path, df: pd.DataFrame, images: Path) -> None:
    """The kept images and a CSV pointing at them, as one portable zip."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("fashion_data.csv", df.assign(image_path=["images/" + n for n in df.image_name])
                    .to_csv(index=False))
        for name in df.image_name:
            zf.write(images / name, f"images/{name}")


def join_labels(rows: list[dict], labels: L.Labels, caption_names: set[str]) -> tuple[list[dict], dict]:
    """Each row with its attributes: from its label line, else what its caption states
    (`labels_from` says which; `none` when neither has any). No row is ever dropped for
    lacking labels. Also returns the counts: per attribute, how many captions of labelled images
    state it, how often they agree with the label where it is not NA (a check of the parser and
    the data) and how many of those labels are NA; and the labelled images no caption names."""
    out, origins = [], Counter()
    stated, compared, agree, na = Counter(), Counter(), Counter(), Counter()
    for row in rows:
        parsed = parse_caption(row["caption"])
        if row["image_name"] in labels:
            attrs, origin = labels[row["image_name"]], "file"
            na.update(name for name in A.NAMES if attrs.get(name) is None)
            stated.update(parsed.keys())
            known = [k for k in parsed if attrs.get(k) is not None]
            compared.update(known)
            agree.update(k for k in known if parsed[k] == attrs[k])
        else:
            attrs, origin = {name: parsed.get(name) for name in A.NAMES}, "caption" if parsed else "none"
        origins[origin] += 1
        out.append({**row, "labels_from": origin, **{name: attrs.get(name) for name in A.NAMES}})

    def rate(hits: int, n: int) -> float | None:
        return round(hits / n, 4) if n else None

    per_attribute = {name: {"stated": stated[name], "compared": compared[name],
                            "agreement": rate(agree[name], compared[name]), "na_labels": na[name]}
                     for name in A.NAMES}
    return out, {"from_file": origins["file"], "from_caption": origins["caption"], "without": origins["none"],
                 "caption_agreement": rate(sum(agree.values()), sum(compared.values())),
                 "images_in_label_files": len(labels),
                 "labelled_images_without_caption": len(labels.keys() - caption_names),
                 "attributes": per_attribute}


def to_frame(rows: list[dict], images_dir: str) -> pd.DataFrame:
    """The CSV's frame; an attribute that is NA (or unknown) is the string "NA"."""
    df = pd.DataFrame(rows, columns=["image_name", "caption", "split", "labels_from", *A.NAMES])
    df[list(A.NAMES)] = df[list(A.NAMES)].fillna(A.NA)
    df.insert(1, "image_path", [f"{images_dir}/{n}" for n in df["image_name"]])
    return df[COLUMNS]

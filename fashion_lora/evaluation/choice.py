"""Which held-out captions the attribute metric draws, and what each one asks for.

A caption asks for what its words state (the caption parser's reading), never for what only the
label file says: a caption that does not mention a hat asks for no hat and is not scored on it.
Where the parser and the label disagree the caption is left out of that attribute (and counted).
The captions are chosen by value, rarest first, until every value of every scored attribute is
asked for by `per_value` captions or by all the held-out captions that state it: on data that is
77% pure color, a random sample would ask for a lattice about once.
"""

from __future__ import annotations

import random
from collections import Counter

import pandas as pd

from .. import attributes as A
from ..grammar import parse_caption


def stated_items(df: pd.DataFrame, scored_values: dict[str, list[str]]) -> tuple[list[dict], dict[str, int]]:
    """The distinct held-out captions that state a scored value, each with `asks` (attribute ->
    the value its words state), and per attribute the captions left out because their label says
    otherwise. Captions are taken in image-name order, the first image of a repeated caption."""
    val = df[df.split == "val"].sort_values("image_name").drop_duplicates("caption")
    items, left_out = [], Counter()
    for row in val.to_dict("records"):
        parsed, asks = parse_caption(row["caption"]), {}
        for attr, values in scored_values.items():
            value = parsed.get(attr)
            if value is None or value not in values:
                continue
            if row[attr] not in (A.NA, value):
                left_out[attr] += 1
                continue
            asks[attr] = value
        if asks:
            items.append({"image_name": row["image_name"], "caption": row["caption"], "asks": asks})
    return items, {a: left_out[a] for a in scored_values}


def choose_items(items: list[dict], per_value: int, seed: int) -> list[dict]:
    """Up to `per_value` captions for every (attribute, value) the items ask for, rarest values
    first; a caption counts for everything it asks. Seeded, so base and LoRA and every experiment
    with this seed draw the same captions. Returned in image-name order."""
    order = list(items)
    random.Random(seed).shuffle(order)
    available = Counter(pair for item in items for pair in item["asks"].items())
    chosen: dict[str, dict] = {}
    have: Counter = Counter()
    for attr, value in sorted(available, key=lambda pair: (available[pair], pair)):
        for item in order:
            if have[(attr, value)] >= per_value:
                break
            if item["asks"].get(attr) == value and item["image_name"] not in chosen:
                chosen[item["image_name"]] = item
                have.update(item["asks"].items())
    return sorted(chosen.values(), key=lambda item: item["image_name"])

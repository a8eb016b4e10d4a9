"""The attribute sheet: per scored attribute, a held-out caption that asks for it, with base and
LoRA images framed by whether the judge read what the caption asks."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from ..sheets import grid
from .drawing import Drawn


def attribute_sheet(items: list[dict], drawn: Drawn, table: pd.DataFrame, scores: dict, per_attribute: int = 1,
                    seeds_shown: int = 2) -> Image.Image | None:
    """Per attribute of `table`, `per_attribute` captions that ask for it (preferring captions no
    earlier row showed): the attribute's balanced accuracy for base and LoRA (`scores`), the
    caption (with what it asks), then base and LoRA images of the first `seeds_shown` seeds, each
    with what the judge read, framed green when that is what the caption asked, red when not.
    None when the table is empty."""
    shown = min(seeds_shown, drawn.seeds)
    first_seed = int(table.seed.min()) if len(table) else 0
    caption = {item["image_name"]: item["caption"] for item in items}
    rows, shown_items = [], set()
    for attr in dict.fromkeys(table.attribute):
        asked = table[(table.attribute == attr) & (table.seed < first_seed + shown)]
        names = sorted(dict.fromkeys(asked.image_name), key=lambda n: n in shown_items)[:per_attribute]
        shown_items.update(names)
        for name in names:
            cells = []
            for model, label in (("base", "base"), ("lora", "LoRA")):
                for r in asked[(asked.image_name == name) & (asked.model == model)].itertuples():
                    cells.append((f"{label} s{r.seed - first_seed}", drawn.images[model][r.image], r.read,
                                  r.read == r.stated))
            value = asked[asked.image_name == name].stated.iloc[0]
            score = scores[attr]
            rows.append((f"{attr} = {value} (balanced: base {score['base']:.2f}, LoRA {score['lora']:.2f}, chance "
                         f"{score['chance']:.2f}): {caption[name]}", cells))
    return grid(rows, cell=128) if rows else None

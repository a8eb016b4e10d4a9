"""The judge's held-out table, the gate of the attribute metric: per attribute, plain and
balanced accuracy on the held-out photos, per-value recall, and whether it is scored.

DeepFashion's values are far from balanced (52-79% pure color and cotton, glasses "no" on 98%):
plain accuracy lets a reader that always answers the majority value pass. Balanced accuracy (the
mean of the per-value recalls) puts that reader at chance, 1 / the number of values."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from .. import attributes as A
from ..params import JudgeParams


def majority_rate(labels: list[str]) -> float:
    """The rate of the most common value: plain accuracy's chance over these labels."""
    return round(Counter(labels).most_common(1)[0][1] / len(labels), 4)


def recalls(truth: list[str], read: list[str]) -> dict[str, float]:
    """Per value of `truth`: the fraction of its items read as that value."""
    hits, counts = Counter(t for t, r in zip(truth, read) if t == r), Counter(truth)
    return {v: round(hits[v] / n, 4) for v, n in sorted(counts.items())}


def balanced(recall: dict[str, float], values: list[str]) -> float:
    """Balanced accuracy over `values`: the mean of their recalls."""
    return round(float(np.mean([recall[v] for v in values])), 4)


def classes_of(df: pd.DataFrame) -> dict[str, list[str]]:
    """The attributes with at least two labelled values in `df`, and those values (sorted)."""
    out = {}
    for name in A.NAMES:
        values = sorted(v for v in set(df[name]) if v != A.NA)
        if len(values) >= 2:
            out[name] = values
    return out


def score_table(classes: dict[str, list[str]], held: pd.DataFrame, reads: dict[str, list[str]],
                settings: JudgeParams) -> dict:
    """Per attribute of the schema (so the report says why one is not scored): the held-out
    images per value, plain accuracy and the majority rate, per-value recall, and over the values
    with at least `judge.min_items` held-out images (those the metric may ask for) the balanced
    accuracy (the metric's ceiling), its chance and whether the attribute is scored: at least two
    such values, balanced accuracy at least `judge.min_balanced_accuracy` and above chance."""
    out = {}
    for name in A.NAMES:
        truth = [v for v in held[name] if v != A.NA]
        row: dict = {"items": len(truth), "values": dict(sorted(Counter(truth).items()))}
        if name not in classes:
            row.update(scored=False, why="fewer than two labelled values in the train split")
            out[name] = row
            continue
        read = [r for v, r in zip(held[name], reads[name]) if v != A.NA]
        row["accuracy"] = round(sum(t == r for t, r in zip(truth, read)) / len(truth), 4) if truth else None
        row["majority"] = majority_rate(truth) if truth else None
        row["recall"] = recalls(truth, read)
        enough = [v for v, n in row["values"].items() if n >= settings.min_items]
        row["scored_values"] = enough
        if len(enough) < 2:
            row.update(scored=False, why=f"fewer than two values with judge.min_items ({settings.min_items}) "
                                         "labelled held-out images")
        else:
            row["balanced_accuracy"], row["chance"] = balanced(row["recall"], enough), round(1 / len(enough), 4)
            if row["balanced_accuracy"] < settings.min_balanced_accuracy:
                row.update(scored=False, why=f"held-out balanced accuracy {row['balanced_accuracy']:.3f} below "
                                             "judge.min_balanced_accuracy")
            elif row["balanced_accuracy"] <= row["chance"]:
                row.update(scored=False, why="no better than a reader that always answers the majority value")
            else:
                row["scored"] = True
        out[name] = row
    return out

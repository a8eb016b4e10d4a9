"""Scores of the drawn images: one table of reads (a row per drawn image and attribute its caption
asks for), and from it per attribute and model the balanced accuracy (the mean of the per-value
recalls, chance 1 / the values asked) beside plain accuracy, the confusion matrix, macro means;
KID on judge features; an optional CLIP score."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..judge.table import balanced, majority_rate, recalls
from .drawing import MODELS, Drawn

READS_COLUMNS = ["image_name", "seed", "model", "attribute", "stated", "read"]


def reads_table(items: list[dict], drawn: Drawn, seed: int) -> pd.DataFrame:
    """Every drawn image (item-major, `drawn.seeds` per item) with each attribute its caption asks
    for: what was asked (`stated`) and what the judge read; `image` indexes `drawn.images[model]`.
    The one walk over the image index: scores, confusion matrices and the sheet come from it."""
    rows = [{"image_name": item["image_name"], "seed": seed + s, "model": model, "attribute": attr,
             "stated": value, "read": drawn.reads[model][attr][k * drawn.seeds + s], "image": k * drawn.seeds + s}
            for model in MODELS for k, item in enumerate(items) for s in range(drawn.seeds)
            for attr, value in item["asks"].items()]
    return pd.DataFrame(rows, columns=[*READS_COLUMNS, "image"])


def score_attributes(table: pd.DataFrame, judge_table: dict, withheld: set[str]) -> dict:
    """Per attribute the table holds (in the judge's order): each model's balanced accuracy over
    the values asked (`base`, `lora`), its chance and the judge's held-out balanced accuracy over
    the same values (`ceiling`); plain accuracy and its chance (`majority`); the per-value recalls
    and the images per value (per model)."""
    out = {}
    for attr in [a for a in judge_table if a in set(table.attribute)]:
        rows = table[table.attribute == attr]
        base = rows[rows.model == "base"]
        values = sorted(set(base.stated))
        row: dict = {}
        recall = {}
        for model in MODELS:
            r = rows[rows.model == model]
            recall[model] = recalls(list(r.stated), list(r.read))
            row[model] = balanced(recall[model], values)
        row.update(chance=round(1 / len(values), 4), ceiling=balanced(judge_table[attr]["recall"], values))
        for model in MODELS:
            r = rows[rows.model == model]
            row[f"{model}_accuracy"] = round(float((r.stated == r.read).mean()), 4)
        row.update(majority=majority_rate(list(base.stated)), withheld=attr in withheld, images=len(base),
                   values=base.stated.value_counts().sort_index().to_dict(), recall=recall)
        out[attr] = row
    return out


def macros(attributes: dict) -> tuple[dict, dict]:
    """Macro means over the attributes asked with two values or more (one value asked has chance
    1: a model that always draws it scores 1), all / withheld / known: balanced, then plain."""
    def mean(key: str, which: bool | None) -> float | None:
        vals = [r[key] for r in attributes.values() if len(r["values"]) >= 2 and which in (None, r["withheld"])]
        return round(float(np.mean(vals)), 4) if vals else None

    groups = (("", None), ("withheld_", True), ("known_", False))
    return ({f"{g}{m}": mean(m, which) for g, which in groups for m in MODELS},
            {f"{g}{m}": mean(f"{m}_accuracy", which) for g, which in groups for m in MODELS})


def confusion(table: pd.DataFrame) -> dict:
    """Per attribute and model: values asked x values read, counts of images."""
    out: dict = {}
    for (attr, model), rows in table.groupby(["attribute", "model"], sort=False):
        counts = rows.groupby(["stated", "read"]).size()
        matrix = out.setdefault(attr, {}).setdefault(model, {})
        for (asked, read), n in counts.items():
            matrix.setdefault(asked, {})[read] = int(n)
    return out


def confusion_rows(table: pd.DataFrame, model: str) -> list[dict]:
    """One row per image and attribute, `attribute: value` asked and read: what `dvc plots`'s
    confusion template counts into one matrix per model (attributes as blocks on its diagonal)."""
    rows = table[table.model == model]
    return [{"asked": f"{a}: {s}", "read": f"{a}: {r}"} for a, s, r in zip(rows.attribute, rows.stated, rows.read)]


def kid(features: torch.Tensor, reference: torch.Tensor, seed: int) -> dict:
    """Kernel Inception Distance (torchmetrics' unbiased estimate, polynomial kernel) between two
    sets of judge features; subsets as large as the smaller set allows. Both sets are divided by
    the reference's RMS first: the cubic kernel makes KID grow with the sixth power of the
    features' scale (raw judge features gave values near 20,000), and one scale for both keeps
    the comparison."""
    from torchmetrics.image.kid import KernelInceptionDistance

    scale = reference.double().pow(2).mean().sqrt().clamp_min(1e-12)
    features, reference = features.double() / scale, reference.double() / scale

    with warnings.catch_warnings():  # it warns that it keeps every feature: here a few hundred small vectors
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=50,
                                         subset_size=min(len(features), len(reference), 100))
    metric.update(reference, real=True)
    metric.update(features, real=False)
    torch.manual_seed(seed)  # the subsets are drawn with torch's global generator
    mean, std = metric.compute()
    return {"mean": round(float(mean), 6), "std": round(float(std), 6)}


def clip_score(clip_dir: str | None, images: list, prompts: list[str]) -> float | None:
    """Mean 100 * cosine(image, text) with a local CLIP model; None when no model is configured."""
    if not clip_dir:
        return None
    path = Path(clip_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"evaluate.clip_model: {path} is not a local CLIP model folder (no config.json); "
                        "download e.g. openai/clip-vit-large-patch14 elsewhere, copy it here, or set it to null")
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(path, local_files_only=True)
    with torch.no_grad():
        inputs = proc(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True)
        out = model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    return float(100 * (img * txt).sum(-1).mean())

"""Base vs LoRA evaluation: the held-out denoising loss (`losses`) and the attribute metric, one
call (`attribute_metric`): held-out captions chosen by value (`choice`), drawn by both models and
read by the judge (`drawing`), scored on what each caption states with balanced accuracy
(`scoring`), shown on a sheet (`sheets`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from .. import paths
from ..files import write_json
from ..judge import Judge
from ..params import EvaluateParams, GenerateParams
from .choice import choose_items, stated_items
from .drawing import MODELS, Drawn, draw
from .losses import val_losses
from .scoring import READS_COLUMNS, clip_score, confusion, confusion_rows, kid, macros, reads_table, score_attributes
from .sheets import attribute_sheet

__all__ = ["AttributeResult", "attribute_metric", "val_losses"]
log = logging.getLogger(__name__)


@dataclass
class AttributeResult:
    """What the attribute metric gives the evaluate stage to write."""

    metrics: dict  # merged into metrics.json
    reads: pd.DataFrame  # a row per drawn image and attribute its caption asks for
    confusion: dict  # attribute -> model -> asked -> read -> images
    sheet: Image.Image | None

    def write(self, folder: Path) -> None:
        """The metric's files in `folder` (evaluate's staging copy of reports/evaluate)."""
        rows = [{"attribute": a, "base": r["base"], "lora": r["lora"], "ceiling": r["ceiling"]}
                for a, r in self.metrics["attributes"].items()]  # the grouped bars of `dvc plots`
        write_json(folder / paths.EVALUATE_PER_ATTRIBUTE.name, rows)
        self.reads[READS_COLUMNS].to_csv(folder / paths.EVALUATE_READS.name, index=False)
        write_json(folder / paths.EVALUATE_CONFUSION.name, self.confusion)
        for model in MODELS:
            write_json(folder / paths.EVALUATE_CONFUSION_ROWS[model].name, confusion_rows(self.reads, model))
        if self.sheet is not None:
            self.sheet.save(folder / paths.EVALUATE_SHEET.name)


def attribute_metric(pipe, judge: Judge, reference: torch.Tensor, df: pd.DataFrame, withheld: set[str],
                     settings: EvaluateParams, drawing: GenerateParams, size: tuple[int, int], seed: int,
                     max_token_length: int) -> AttributeResult | None:
    """Choose held-out captions of `df` by value, draw them with base and LoRA, score what each
    caption states. `withheld`: the attributes the base never read (the tiny base's). None when
    no held-out caption states a value the judge scores."""
    items, left_out = stated_items(df, judge.scored_values())
    if not items:
        log.warning("no held-out caption states a value the judge scores (captions outside DeepFashion's grammar, "
                    "or an empty val split): no attribute metric")
        return None
    items = choose_items(items, settings.captions_per_value, seed)
    captions = [item["caption"] for item in items]
    drawn: Drawn = draw(pipe, judge, captions, settings.attribute_seeds, settings.attribute_steps,
                        drawing.guidance_scale, drawing.negative_prompt, *size, seed, fuse=drawing.fuse_lora,
                        max_token_length=max_token_length)
    table = reads_table(items, drawn, seed)
    attributes = score_attributes(table, judge.report["attributes"], withheld)
    for attr, row in attributes.items():
        row["left_out"] = left_out[attr]  # captions whose label says otherwise than their words
    balanced, plain = macros(attributes)
    metrics = {
        "attributes": attributes,
        "attribute_macro": balanced,
        "attribute_macro_accuracy": plain,
        "kid": {m: kid(drawn.features[m], reference, seed) for m in MODELS},
        "diversity": {m: round(drawn.diversity[m], 5) for m in MODELS},
        "attribute_captions": len(items),
        "attribute_images_per_model": len(items) * settings.attribute_seeds,
    }
    if settings.clip_model:
        prompts = [c for c in captions for _ in range(settings.attribute_seeds)]
        metrics["clip_score"] = {m: clip_score(settings.clip_model, drawn.images[m], prompts) for m in MODELS}
    for name, row in attributes.items():
        log.info("%-17s balanced base %.2f  LoRA %.2f  (chance %.2f, ceiling %.2f; plain %.2f / %.2f; %s)%s", name,
                 row["base"], row["lora"], row["chance"], row["ceiling"], row["base_accuracy"], row["lora_accuracy"],
                 ", ".join(f"{v} {n}" for v, n in row["values"].items()), ", withheld" if row["withheld"] else "")
    return AttributeResult(metrics, table, confusion(table), attribute_sheet(items, drawn, table, attributes))

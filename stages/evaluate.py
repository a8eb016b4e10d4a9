"""evaluate stage: base vs LoRA on the held-out val latents, and the attribute judge's reading of images
drawn from held-out captions -> reports/evaluate/ (metrics.json, bands.json, attributes.json,
attribute_reads.csv, attribute_sheet.png)."""

import logging

import pandas as pd

from fashion_lora import judge as judges
from fashion_lora import paths
from fashion_lora.evaluation import (
    attribute_items,
    attribute_metrics,
    attribute_reads,
    attribute_rows,
    attribute_sheet,
    clip_score,
    val_losses,
)
from fashion_lora.inference import image_size, prepare_inference
from fashion_lora.latents import load_latents
from fashion_lora.lora import adapter_token_window, load_pipeline
from fashion_lora.params import load_params
from fashion_lora.utils import UserError, atomic_dir, configure_torch, resolve_device, run_stage, write_json

log = logging.getLogger("stages.evaluate")
READS = "attribute_reads.csv"  # in reports/evaluate: one row per drawn image and stated attribute


def main() -> None:
    params = load_params()
    configure_torch(params, "evaluate")
    settings, drawing = params.evaluate, params.generate  # the attribute images are drawn like generate draws
    device = resolve_device(settings.device, "evaluate.device")
    pipe = load_pipeline(paths.BASE, paths.LORA, device)
    window = adapter_token_window(paths.LORA)  # prompts are encoded as training encoded its captions
    val = load_latents(paths.LATENTS, "val")
    if len(val) == 0:
        raise UserError("data/latents has no val latents to evaluate on (filter.val_fraction)")
    metrics, bands = val_losses(pipe, val.per_item(), [it["caption"] for it in val.items], settings.repeats,
                                settings.timestep_bands, settings.batch_size, params.seed, window)
    log.info("val MSE base %.5f -> LoRA %.5f (%.1f%% better) over %d fixed evaluations",
             metrics["base"]["mse"], metrics["lora"]["mse"], 100 * metrics["improvement"]["mse"],
             metrics["evaluations"])
    judge, reference = judges.load(paths.JUDGE)
    scoring = settings.attribute_captions > 0 and bool(judge.scored)
    if settings.attribute_captions and not judge.scored:
        log.warning("the judge scores no attribute (its report in %s says why): no attribute metric", paths.JUDGE)
    if scoring:
        items = attribute_items(pd.read_csv(paths.CSV, keep_default_na=False, dtype=str),
                                settings.attribute_captions, params.seed)
        # only the tiny base was pretrained without some attributes' words; any other base knows them all
        withheld = set(params.model.pretrain.withheld) if params.model.base == "tiny" else set()
        # the val losses above stay fp32; the images use evaluate.precision
        prepare_inference(pipe, device, settings.precision, "evaluate.precision", cuda_graphs=drawing.cuda_graphs)
        attr, images, reads = attribute_metrics(
            pipe, judge, reference, items, withheld, settings.attribute_seeds, settings.attribute_steps,
            drawing.guidance_scale, drawing.negative_prompt, *image_size(drawing.height, drawing.width, paths.LATENTS),
            params.seed, fuse=drawing.fuse_lora, max_token_length=window)
        metrics.update(attr)
        for name, row in attr["attributes"].items():
            log.info("%-16s base %.2f  LoRA %.2f  (chance %.2f, ceiling %.2f%s)", name, row["base"], row["lora"],
                     row["chance"], row["ceiling"], ", withheld from the base" if row["withheld"] else "")
        log.info("KID to the held-out images: base %.4f, LoRA %.4f", attr["kid"]["base"]["mean"],
                 attr["kid"]["lora"]["mean"])
        if settings.clip_model:
            prompts = [item["caption"] for item in items for _ in range(settings.attribute_seeds)]
            metrics["clip_score"] = {name: clip_score(settings.clip_model, images[name], prompts)
                                     for name in ("base", "lora")}
    with atomic_dir(paths.EVALUATE) as tmp:
        write_json(tmp / paths.EVALUATE_METRICS.name, metrics)
        write_json(tmp / "bands.json", bands)
        if scoring:
            write_json(tmp / paths.EVALUATE_PER_ATTRIBUTE.name, attribute_rows(attr["attributes"]))
            attribute_reads(items, reads, settings.attribute_seeds, list(attr["attributes"]), params.seed).to_csv(
                tmp / READS, index=False)
            sheet = attribute_sheet(items, images, reads, list(attr["attributes"]), settings.attribute_seeds)
            if sheet is None:
                log.warning("no attribute the judge scores is stated by the attribute captions: no sheet")
            else:
                sheet.save(tmp / paths.EVALUATE_SHEET.name)


if __name__ == "__main__":
    run_stage(main)

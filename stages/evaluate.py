"""evaluate stage: base vs LoRA on the held-out val latents, and the attribute judge's reading of images
drawn from held-out captions chosen by value -> reports/evaluate/ (metrics.json, bands.json, attributes.json,
attribute_reads.csv, confusion.json, confusion_{base,lora}.json, attribute_sheet.png)."""

import logging

import pandas as pd

from fashion_lora import judge as judges
from fashion_lora import paths
from fashion_lora.devices import configure_torch, resolve_device
from fashion_lora.errors import UserError
from fashion_lora.evaluation import attribute_metric, val_losses
from fashion_lora.files import atomic_dir, write_json
from fashion_lora.inference import image_size, prepare_inference
from fashion_lora.latents import load_latents
from fashion_lora.lora import adapter_token_window, load_pipeline
from fashion_lora.params import load_params
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.evaluate")


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
    result = None
    if settings.captions_per_value and not judge.scored:
        log.warning("the judge scores no attribute (its report in %s says why): no attribute metric", paths.JUDGE)
    elif settings.captions_per_value:
        # only the tiny base was pretrained without some attributes' words; any other base knows them all
        withheld = set(params.model.pretrain.withheld) if params.model.base == "tiny" else set()
        # the val losses above stay fp32; the images use evaluate.precision
        prepare_inference(pipe, device, settings.precision, "evaluate.precision", cuda_graphs=drawing.cuda_graphs)
        result = attribute_metric(pipe, judge, reference, pd.read_csv(paths.CSV, keep_default_na=False, dtype=str),
                                  withheld, settings, drawing, image_size(drawing.height, drawing.width, paths.LATENTS),
                                  params.seed, window)
    if result is not None:
        metrics.update(result.metrics)
        log.info("macro balanced accuracy, withheld / known: base %s / %s, LoRA %s / %s; KID base %.4f, LoRA %.4f",
                 *(metrics["attribute_macro"][k] for k in ("withheld_base", "known_base", "withheld_lora", "known_lora")),
                 metrics["kid"]["base"]["mean"], metrics["kid"]["lora"]["mean"])
    with atomic_dir(paths.EVALUATE) as tmp:
        write_json(tmp / paths.EVALUATE_METRICS.name, metrics)
        write_json(tmp / "bands.json", bands)
        if result is not None:
            result.write(tmp)


if __name__ == "__main__":
    run_stage(main)

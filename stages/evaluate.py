"""evaluate stage: base vs LoRA on the held-out val latents -> reports/evaluate/ (metrics.json, bands.json,
attribute_per_color.json, attribute_sheet.png)."""

import logging

from fashion_lora import paths
from fashion_lora.evaluation import attribute_metrics, attribute_prompts, attribute_sheet, clip_score, val_losses
from fashion_lora.inference import image_size, prepare_inference
from fashion_lora.latents import load_latents
from fashion_lora.lora import load_pipeline
from fashion_lora.params import load_params
from fashion_lora.utils import UserError, atomic_dir, configure_torch, resolve_device, run_stage, write_json

log = logging.getLogger("stages.evaluate")


def main() -> None:
    params = load_params()
    configure_torch(params, "evaluate")
    settings, drawing = params.evaluate, params.generate  # the attribute images are drawn like generate draws
    device = resolve_device(settings.device, "evaluate.device")
    pipe = load_pipeline(paths.BASE, paths.LORA, device)
    val = load_latents(paths.LATENTS, "val")
    if len(val) == 0:
        raise UserError("data/latents has no val latents to evaluate on (filter.val_fraction)")
    metrics, bands = val_losses(pipe, val.per_item(), [it["caption"] for it in val.items], settings.repeats,
                                settings.timestep_bands, settings.batch_size, params.seed)
    log.info("val MSE base %.5f -> LoRA %.5f (%.1f%% better) over %d fixed evaluations",
             metrics["base"]["mse"], metrics["lora"]["mse"], 100 * metrics["improvement"]["mse"],
             metrics["evaluations"])
    if settings.attribute_prompts:
        # the val losses above stay fp32; the images use evaluate.precision
        prepare_inference(pipe, device, settings.precision, "evaluate.precision", cuda_graphs=drawing.cuda_graphs)
        attr, images = attribute_metrics(pipe, settings.attribute_prompts, settings.attribute_seeds,
                                         settings.attribute_steps, drawing.guidance_scale, drawing.negative_prompt,
                                         *image_size(drawing.height, drawing.width, paths.LATENTS), params.seed,
                                         fuse=drawing.fuse_lora)
        per_color = attr.pop("per_color")  # its own file: 16 more metric columns would crowd `dvc exp show`
        metrics["attribute"] = attr
        log.info("colour attribute accuracy: base %.2f, LoRA %.2f (chance %.2f)", attr["base_accuracy"],
                 attr["lora_accuracy"], attr["chance"])
        if settings.clip_model:
            prompts = attribute_prompts(settings.attribute_prompts, settings.attribute_seeds)
            metrics["clip_score"] = {name: clip_score(settings.clip_model, images[name], prompts)
                                     for name in ("base", "lora")}
    with atomic_dir(paths.EVALUATE) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "bands.json", bands)
        if settings.attribute_prompts:
            write_json(tmp / paths.EVALUATE_PER_COLOR.name, per_color)
            attribute_sheet(images, settings.attribute_prompts, params.seed).save(tmp / "attribute_sheet.png")


if __name__ == "__main__":
    run_stage(main)

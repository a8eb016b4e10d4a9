"""evaluate stage: base vs LoRA on the held-out val latents -> reports/evaluate/ (metrics.json, bands.json,
attribute_per_color.json, attribute_sheet.png)."""

import logging

from fashion_lora import paths
from fashion_lora.evaluation import attribute_metrics, attribute_prompts, attribute_sheet, clip_score, val_losses
from fashion_lora.latents import image_size, load_latents
from fashion_lora.lora import load_pipeline
from fashion_lora.sampling import use_cuda_graphs
from fashion_lora.params import load_params
from fashion_lora.utils import UserError, atomic_dir, inference_dtype, resolve_device, run_stage, set_seed, write_json

log = logging.getLogger("stages.evaluate")


def main() -> None:
    params = load_params()
    ev, gen = params.evaluate, params.generate
    set_seed(params.seed)
    device = resolve_device(ev.device, "evaluate.device")
    pipe = load_pipeline(paths.BASE, paths.LORA, device)
    val = load_latents(paths.LATENTS, "val")
    if len(val) == 0:
        raise UserError("data/latents has no val latents to evaluate on (filter.val_fraction)")
    metrics, bands = val_losses(pipe, val.per_item(), [it["caption"] for it in val.items], ev.repeats,
                                ev.timestep_bands, ev.batch_size, params.seed)
    log.info("val MSE base %.5f -> LoRA %.5f (%.1f%% better) over %d fixed evaluations",
             metrics["base"]["mse"], metrics["lora"]["mse"], 100 * metrics["improvement"]["mse"],
             metrics["evaluations"])
    if ev.attribute_prompts:
        pipe.to(dtype=inference_dtype(ev.precision, device, "evaluate.precision"))  # val losses above stay fp32
        if gen.cuda_graphs and device.type == "cuda":  # after the dtype change: graphs hold the weights' memory
            use_cuda_graphs(pipe.unet)
        attr, images = attribute_metrics(pipe, ev.attribute_prompts, ev.attribute_seeds, ev.attribute_steps,
                                         gen.guidance_scale, gen.negative_prompt,
                                         *image_size(gen.height, gen.width, paths.LATENTS), params.seed,
                                         fuse=gen.fuse_lora)
        per_color = attr.pop("per_color")  # its own file: 16 more metric columns would crowd `dvc exp show`
        metrics["attribute"] = attr
        log.info("colour attribute accuracy: base %.2f, LoRA %.2f (chance %.2f)", attr["base_accuracy"],
                 attr["lora_accuracy"], attr["chance"])
        if ev.clip_model:
            prompts = attribute_prompts(ev.attribute_prompts, ev.attribute_seeds)
            metrics["clip_score"] = {name: clip_score(ev.clip_model, images[name], prompts) for name in ("base", "lora")}
    with atomic_dir(paths.EVALUATE) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "bands.json", bands)
        if ev.attribute_prompts:
            write_json(tmp / paths.EVALUATE_PER_COLOR.name, per_color)
            attribute_sheet(images, ev.attribute_prompts, params.seed).save(tmp / "attribute_sheet.png")


if __name__ == "__main__":
    run_stage(main)

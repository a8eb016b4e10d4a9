"""evaluate stage: base vs LoRA on the held-out val latents -> reports/evaluate/ (metrics.json, bands.json)."""

import logging
from pathlib import Path

from fashion_lora.evaluation import ATTRIBUTE_PROMPT, attribute_metrics, clip_score, val_losses
from fashion_lora.latents import load_latents
from fashion_lora.lora import load_pipeline
from fashion_lora.params import load_params
from fashion_lora.pipeline import grid
from fashion_lora.synthetic import COLORS
from fashion_lora.utils import UserError, atomic_dir, resolve_device, run_stage, set_seed, write_json

log = logging.getLogger("stages.evaluate")
OUT = Path("reports/evaluate")


def main() -> None:
    params = load_params()
    e, g = params.evaluate, params.generate
    set_seed(params.seed)
    device = resolve_device(e.device, "evaluate.device")
    pipe = load_pipeline(Path("models/base"), Path("models/lora"), device)
    latents, items = load_latents(Path("data/latents"), "val")
    if len(latents) == 0:
        raise UserError("data/latents has no val latents to evaluate on (filter.val_fraction)")
    metrics, bands = val_losses(pipe, latents, [it["caption"] for it in items], e.repeats, e.timestep_bands,
                                e.batch_size, params.seed)
    log.info("val MSE base %.5f -> LoRA %.5f (%.1f%% better) over %d fixed evaluations",
             metrics["base"]["mse"], metrics["lora"]["mse"], 100 * metrics["improvement"]["mse"],
             metrics["evaluations"])
    sheet = None
    if e.attribute_prompts:
        attr, images = attribute_metrics(pipe, e.attribute_prompts, e.attribute_seeds, e.attribute_steps,
                                         g.guidance_scale, g.negative_prompt, g.height, g.width, params.seed)
        per_color = attr.pop("per_color")  # its own file: 16 more metric columns would crowd `dvc exp show`
        metrics["attribute"] = attr
        log.info("colour attribute accuracy: base %.2f, LoRA %.2f (chance %.2f)", attr["base_accuracy"],
                 attr["lora_accuracy"], attr["chance"])
        colors = list(COLORS)[: e.attribute_prompts]
        per = len(images["base"]) // len(colors)
        sheet = grid([(f"{c} (seed {params.seed})", [("base", images["base"][i * per]),
                                                      ("LoRA", images["lora"][i * per])])
                      for i, c in enumerate(colors)], cell=96)
        if e.clip_model:
            prompts = [ATTRIBUTE_PROMPT.format(color=c) for c in colors for _ in range(per)]
            metrics["clip_score"] = {name: clip_score(e.clip_model, images[name], prompts)
                                     for name in ("base", "lora")}
    with atomic_dir(OUT) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "bands.json", bands)
        if sheet is not None:
            write_json(tmp / "attribute_per_color.json", per_color)
            sheet.save(tmp / "attribute_sheet.png")


if __name__ == "__main__":
    run_stage(main)

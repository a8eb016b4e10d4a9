"""generate stage: prompts x steps, base vs LoRA with the same seeds -> reports/generate/."""

import io
import logging
import time
from pathlib import Path

from tqdm import tqdm

from fashion_lora.lora import load_pipeline
from fashion_lora.params import load_params
from fashion_lora.pipeline import generate_image, grid, lora_enabled, slug
from fashion_lora.utils import atomic_dir, atomic_write_bytes, resolve_device, run_stage, write_json

log = logging.getLogger("stages.generate")
IMAGES = Path("reports/generate/images")
GRID = Path("reports/generate/grid.png")
METRICS = Path("reports/generate/metrics.json")


def main() -> None:
    params = load_params()
    g = params.generate
    device = resolve_device(g.device, "generate.device")
    pipe = load_pipeline(Path("models/base"), Path("models/lora"), device)
    rows, seconds = [], {s: [] for s in g.steps}
    jobs = [(i, prompt, steps, model) for i, prompt in enumerate(g.prompts) for steps in g.steps
            for model in ("base", "lora")]
    with atomic_dir(IMAGES) as tmp, tqdm(total=len(jobs), desc="generate", unit="img") as bar:
        images = {}
        for i, prompt, steps, model in jobs:
            t0 = time.perf_counter()
            with lora_enabled(pipe, model == "lora"):
                img = generate_image(pipe, prompt, g.negative_prompt, steps, g.guidance_scale, g.seed + i,
                                     g.height, g.width)
            seconds[steps].append(time.perf_counter() - t0)
            img.save(tmp / f"{i:02d}_{slug(prompt)}_{steps}steps_{model}.png")
            images[i, steps, model] = img
            bar.update(1)
    for i, prompt in enumerate(g.prompts):
        rows.append((prompt, [(f"{s} steps {m}", images[i, s, m]) for s in g.steps for m in ("base", "lora")]))
    buf = io.BytesIO()
    grid(rows).save(buf, format="PNG")
    atomic_write_bytes(GRID, buf.getvalue())
    write_json(METRICS, {"seconds_per_image": {f"steps_{s}": round(sum(v) / len(v), 4) for s, v in seconds.items()},
                         "images": len(jobs), "device": str(device)})
    log.info("wrote %d images and %s; seconds/image %s", len(jobs), GRID,
             {s: round(sum(v) / len(v), 3) for s, v in seconds.items()})


if __name__ == "__main__":
    run_stage(main)

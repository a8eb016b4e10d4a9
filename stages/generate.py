"""generate stage: prompts x steps, base vs LoRA with the same seeds -> reports/generate/."""

import io
import logging

from fashion_lora import paths
from fashion_lora.devices import configure_torch, resolve_device
from fashion_lora.files import atomic_dir, atomic_write_bytes, write_json
from fashion_lora.inference import image_size, prepare_inference
from fashion_lora.lora import adapter_token_window, load_pipeline
from fashion_lora.params import load_params
from fashion_lora.sampling import sample_prompt_grid
from fashion_lora.sheets import grid
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.generate")


def main() -> None:
    params = load_params()
    configure_torch(params, "generate")
    settings = params.generate
    device = resolve_device(settings.device, "generate.device")
    pipe = load_pipeline(paths.BASE, paths.LORA, device)
    window = adapter_token_window(paths.LORA)  # prompts are encoded as training encoded its captions
    dtype = prepare_inference(pipe, device, settings.precision, "generate.precision", cuda_graphs=settings.cuda_graphs)
    with atomic_dir(paths.GENERATE_IMAGES) as tmp:
        images, seconds = sample_prompt_grid(pipe, settings, image_size(settings.height, settings.width, paths.LATENTS),
                                             tmp, window)
    rows = [(prompt, [(f"{s} steps {m}", images[i, s, m]) for s in settings.steps for m in ("base", "lora")])
            for i, prompt in enumerate(settings.prompts)]
    buf = io.BytesIO()
    grid(rows).save(buf, format="PNG")
    atomic_write_bytes(paths.GENERATE_GRID, buf.getvalue())
    mean = {s: sum(v) / len(v) for s, v in seconds.items()}
    write_json(paths.GENERATE_METRICS, {"seconds_per_image": {f"steps_{s}": round(m, 4) for s, m in mean.items()},
                                        "images": len(images), "device": str(device),
                                        "dtype": str(dtype).removeprefix("torch."), "fuse_lora": settings.fuse_lora})
    log.info("wrote %d images and %s; seconds/image %s", len(images), paths.GENERATE_GRID,
             {s: round(m, 3) for s, m in mean.items()})


if __name__ == "__main__":
    run_stage(main)

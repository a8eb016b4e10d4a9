"""Base vs LoRA evaluation: fixed-plan val losses (overall and per timestep band) and
generation-side metrics (colour-attribute accuracy, diversity, optional CLIP score)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import diffusion
from .sampling import lora_enabled, sample_image
from .sheets import grid
from .synthetic import COLORS
from .utils import UserError
from .val_loss import band_means, eval_losses, fixed_eval, summarize

log = logging.getLogger(__name__)

# Prompt for the attribute metric: the upper garment's colour is the attribute under test.
ATTRIBUTE_PROMPT = ("The lady wears a short-sleeve {color} shirt with solid color patterns. "
                    "She wears long grey trousers with solid color patterns.")
# Torso region of a whole synthetic figure (fractions of width/height of its portrait, whose
# aspect is FIGURE_ASPECT): the shirt spans 22-55% of the height, within 0.5 +- 0.2 of the width.
TORSO = (0.38, 0.27, 0.62, 0.47)
FIGURE_ASPECT = 0.68


def torso_box(width: int, height: int) -> tuple[float, float, float, float]:
    """TORSO in an image of `width` x `height` drawn like the training crops: the figure scaled
    to cover it and centred, so a wider image (a square) shows a vertical slice of the figure
    and a narrower one a horizontal slice."""
    aspect = width / height
    x0, y0, x1, y1 = TORSO
    if aspect >= FIGURE_ASPECT:
        k = aspect / FIGURE_ASPECT  # the image shows 1/k of the figure's height
        return x0, 0.5 + (y0 - 0.5) * k, x1, 0.5 + (y1 - 0.5) * k
    k = FIGURE_ASPECT / aspect  # 1/k of its width
    return 0.5 + (x0 - 0.5) * k, y0, 0.5 + (x1 - 0.5) * k, y1


def val_losses(pipe, latents: list[torch.Tensor], captions: list[str], repeats: int, bands: int, batch_size: int,
               seed: int) -> tuple[dict, list[dict]]:
    """Base and LoRA on the same val latents (one per item, buckets may differ), noise and
    timesteps. Returns metrics and band rows."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    T = scheduler.config.num_train_timesteps
    ids, _ = diffusion.tokenize(pipe.tokenizer, captions)
    plan = fixed_eval([tuple(v.shape) for v in latents], repeats, T, seed)
    results = {}
    for name, enabled in (("base", False), ("lora", True)):
        with lora_enabled(pipe, enabled):
            # inside the switch: a text-encoder LoRA changes the embeddings too
            encoder_hidden_states = diffusion.encode_text(pipe.text_encoder, ids).float().cpu()
            mse, mae = eval_losses(pipe.unet, scheduler, latents, encoder_hidden_states, plan, batch_size,
                                   desc=f"val loss ({name})")
        results[name] = (mse, mae)
    metrics = {name: summarize(*results[name]) for name in results}
    base, lora = metrics["base"], metrics["lora"]
    metrics["improvement"] = {k: (base[k] - lora[k]) / base[k] if base[k] else 0.0 for k in ("mse", "mae")}
    metrics["evaluations"] = len(plan.item)
    band_rows = []
    base_b = band_means(results["base"][0], plan.timesteps, bands, T)
    lora_b = band_means(results["lora"][0], plan.timesteps, bands, T)
    for b in range(bands):
        lo, hi = b * T // bands, (b + 1) * T // bands
        band_rows.append({"timestep": (lo + hi) // 2, "band": f"{lo}-{hi - 1}",
                          "base_mse": base_b[b], "lora_mse": lora_b[b]})
    return metrics, band_rows


def dominant_color(img: Image.Image) -> str:
    """Name of the palette colour nearest to the median colour of the torso (`torso_box`)."""
    w, h = img.size
    box = torso_box(w, h)
    region = np.asarray(img.convert("RGB").crop((int(box[0] * w), int(box[1] * h), int(box[2] * w),
                                                 int(box[3] * h))), dtype=np.float32)
    median = np.median(region.reshape(-1, 3), axis=0)
    names = list(COLORS)
    dists = [float(np.sum((median - np.array(COLORS[n], dtype=np.float32)) ** 2)) for n in names]
    return names[int(np.argmin(dists))]


def diversity(images: list[Image.Image]) -> float:
    """Mean pairwise RMS pixel distance (0..1) between images of one prompt: 0 = all identical."""
    arrs = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]
    pairs = list(itertools.combinations(arrs, 2))
    return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in pairs])) if pairs else 0.0


def attribute_metrics(pipe, n_colors: int, n_seeds: int, steps: int, guidance: float, negative: str,
                      height: int, width: int, seed: int, fuse: bool = False) -> tuple[dict, dict[str, list[Image.Image]]]:
    """Colour-following accuracy (overall and per colour) and diversity, base vs LoRA, on the same
    prompts and seeds (base first; `fuse` merges the LoRA in for its images). Images come back
    colour-major (`n_seeds` per colour), per model."""
    from tqdm import tqdm

    colors = list(COLORS)[:n_colors]
    out: dict = {"chance": 1 / len(COLORS), "images_per_model": len(colors) * n_seeds,
                 "per_color": [{"colour": c} for c in colors]}  # rows: what `dvc plots` draws as bars
    images: dict[str, list[Image.Image]] = {}
    bar = tqdm(total=2 * len(colors) * n_seeds, desc="colour images", unit="img", mininterval=1.0)
    for name, enabled in (("base", False), ("lora", True)):
        correct, divs, imgs = 0, [], []
        bar.set_postfix(model=name, refresh=False)
        with lora_enabled(pipe, enabled, fuse=fuse):
            for row, color in zip(out["per_color"], colors):
                per_prompt = []
                for s in range(n_seeds):
                    per_prompt.append(sample_image(pipe, ATTRIBUTE_PROMPT.format(color=color), negative, steps,
                                                   guidance, seed + s, height, width))
                    bar.update(1)
                hits = sum(dominant_color(im) == color for im in per_prompt)
                row[name] = hits / n_seeds
                correct += hits
                divs.append(diversity(per_prompt))
                imgs.extend(per_prompt)
        out[f"{name}_accuracy"] = correct / (len(colors) * n_seeds)
        out[f"{name}_diversity"] = float(np.mean(divs))
        images[name] = imgs
    bar.close()
    return out, images


def attribute_sheet(images: dict[str, list[Image.Image]], n_colors: int, seed: int, seeds_shown: int = 4) -> Image.Image:
    """One row per colour prompt: its first `seeds_shown` seeds for the base, then for the LoRA,
    each cell captioned with the colour the metric detected and framed green (counted correct)
    or red (wrong). Images in `attribute_metrics`' order (colour-major)."""
    colors = list(COLORS)[:n_colors]
    per = len(images["base"]) // len(colors)
    shown = min(seeds_shown, per)
    rows = []
    for i, color in enumerate(colors):
        cells = []
        for name, label in (("base", "base"), ("lora", "LoRA")):
            for k in range(shown):
                img = images[name][i * per + k]
                found = dominant_color(img)
                cells.append((f"{label} s{seed + k}", img, found, found == color))
        rows.append((f"prompt: {color} shirt", cells))
    return grid(rows, cell=96)  # cells keep the images' aspect


def attribute_prompts(n_colors: int, n_seeds: int) -> list[str]:
    """The prompt of each image of `attribute_metrics`, in its order."""
    return [ATTRIBUTE_PROMPT.format(color=c) for c in list(COLORS)[:n_colors] for _ in range(n_seeds)]


def clip_score(clip_dir: str | None, images: list[Image.Image], prompts: list[str]) -> float | None:
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

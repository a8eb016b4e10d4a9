"""Base vs LoRA evaluation: fixed-plan val losses (overall and per timestep band) and
generation-side metrics: the attribute judge's reading of images drawn from held-out captions
(accuracy per attribute, macro means), KID between judge features of generated and held-out
images, diversity, and an optional CLIP score."""

from __future__ import annotations

import itertools
import logging
import random
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import attributes as A
from . import diffusion
from .judge import Judge, majority_rate
from .sampling import lora_enabled, sample_image
from .sheets import grid
from .utils import UserError
from .val_loss import band_means, eval_losses, fixed_eval, summarize

log = logging.getLogger(__name__)


def val_losses(pipe, latents: list[torch.Tensor], captions: list[str], repeats: int, bands: int, batch_size: int,
               seed: int, max_token_length: int = 77) -> tuple[dict, list[dict]]:
    """Base and LoRA on the same val latents (one per item, buckets may differ), noise and
    timesteps. Returns metrics and band rows."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    T = scheduler.config.num_train_timesteps
    ids, _ = diffusion.tokenize(pipe.tokenizer, captions, max_token_length)
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


def diversity(images: list[Image.Image]) -> float:
    """Mean pairwise RMS pixel distance (0..1) between images of one prompt: 0 = all identical."""
    arrs = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]
    pairs = list(itertools.combinations(arrs, 2))
    return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in pairs])) if pairs else 0.0


def attribute_items(df: pd.DataFrame, n: int, seed: int) -> list[dict]:
    """`n` distinct held-out captions (a seeded sample, the same for base and LoRA and for every
    experiment with this seed) with their labels; only rows that state some attribute."""
    val = df[(df.split == "val") & (df.labels_from != "none")].sort_values("image_name")
    rows = list(val.drop_duplicates("caption").to_dict("records"))
    if not rows:
        raise UserError("data/fashion_data.csv has no labelled val rows for the attribute metric "
                        "(set evaluate.attribute_captions: 0 to skip it)")
    return sorted(random.Random(seed).sample(rows, min(n, len(rows))), key=lambda r: r["image_name"])


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


def attribute_metrics(pipe, judge: Judge, reference: torch.Tensor, items: list[dict], withheld: set[str],
                      n_seeds: int, steps: int, guidance: float, negative: str, height: int, width: int, seed: int,
                      fuse: bool = False, max_token_length: int = 77
                      ) -> tuple[dict, dict[str, list[Image.Image]], dict[str, dict[str, list[str]]]]:
    """Base and LoRA images of every item's caption and seeds (base first; `fuse` merges the
    LoRA in for its images), read by the judge. Per scored attribute: the accuracy of each model
    over the images whose caption states it (NA labels are not scored), the majority rate of
    those labels (`chance`) and the judge's held-out accuracy (`ceiling`). Returns the metrics,
    the images and the judge's reads per model (item-major, `n_seeds` per item)."""
    from tqdm import tqdm

    images: dict[str, list[Image.Image]] = {}
    reads: dict[str, dict[str, list[str]]] = {}
    feats: dict[str, torch.Tensor] = {}
    divs: dict[str, float] = {}
    bar = tqdm(total=2 * len(items) * n_seeds, desc="attribute images", unit="img", mininterval=1.0)
    for name, enabled in (("base", False), ("lora", True)):
        bar.set_postfix(model=name, refresh=False)
        imgs, per_item = [], []
        with lora_enabled(pipe, enabled, fuse=fuse):
            for item in items:
                drawn = []
                for s in range(n_seeds):
                    drawn.append(sample_image(pipe, item["caption"], negative, steps, guidance, seed + s, height, width,
                                              max_token_length))
                    bar.update(1)
                imgs += drawn
                per_item.append(diversity(drawn))
        images[name] = imgs
        reads[name], feats[name] = judge.read(imgs)
        divs[name] = float(np.mean(per_item))
    bar.close()
    attributes = score_attributes(items, reads, n_seeds, judge.scored, judge.report["attributes"], withheld)

    def macro(model: str, which: bool | None = None) -> float | None:
        vals = [r[model] for r in attributes.values() if which is None or r["withheld"] == which]
        return round(float(np.mean(vals)), 4) if vals else None

    metrics = {
        "attributes": attributes,
        "attribute_macro": {f"{group}{m}": macro(m, which) for group, which in (("", None), ("withheld_", True),
                                                                                 ("known_", False))
                            for m in ("base", "lora")},
        "kid": {m: kid(feats[m], reference, seed) for m in ("base", "lora")},
        "diversity": {m: round(divs[m], 5) for m in ("base", "lora")},
        "attribute_images_per_model": len(items) * n_seeds,
    }
    return metrics, images, reads


def score_attributes(items: list[dict], reads: dict[str, dict[str, list[str]]], n_seeds: int, scored: list[str],
                     judge_table: dict, withheld: set[str]) -> dict:
    """Per scored attribute that some item states: each model's accuracy over the images whose
    caption states it (`reads` item-major, `n_seeds` images per item), the majority rate of
    those labels (`chance`), the judge's held-out accuracy (`ceiling`), `withheld`, the count."""
    out = {}
    for attr in scored:
        truth = [item[attr] for item in items for _ in range(n_seeds)]
        stated = [i for i, v in enumerate(truth) if v != A.NA]
        if not stated:
            continue
        row = {m: round(sum(reads[m][attr][i] == truth[i] for i in stated) / len(stated), 4) for m in reads}
        row.update(chance=majority_rate([truth[i] for i in stated]),
                   ceiling=judge_table[attr]["accuracy"], withheld=attr in withheld, images=len(stated))
        out[attr] = row
    return out


def attribute_rows(attributes: dict) -> list[dict]:
    """The rows `dvc plots` draws as grouped bars: base, LoRA and the judge's ceiling per attribute."""
    return [{"attribute": a, "base": r["base"], "lora": r["lora"], "ceiling": r["ceiling"]}
            for a, r in attributes.items()]


def attribute_reads(items: list[dict], reads: dict[str, dict[str, list[str]]], n_seeds: int, attributes: list[str],
                    seed: int) -> pd.DataFrame:
    """One row per drawn image and scored attribute its caption states: the held-out image the
    caption belongs to, the sampling seed, the model, the stated value and what the judge read.
    The per-image record behind the accuracies (`reads` item-major, `n_seeds` per item), so a
    user can break a score down, e.g. the lower garment's pattern by its length."""
    rows = [{"image_name": item["image_name"], "seed": seed + s, "model": model, "attribute": attr,
             "stated": item[attr], "read": reads[model][attr][k * n_seeds + s]}
            for model in reads for k, item in enumerate(items) for s in range(n_seeds)
            for attr in attributes if item[attr] != A.NA]
    return pd.DataFrame(rows, columns=["image_name", "seed", "model", "attribute", "stated", "read"])


def attribute_sheet(items: list[dict], images: dict[str, list[Image.Image]], reads: dict[str, dict[str, list[str]]],
                    attributes: list[str], n_seeds: int, per_attribute: int = 1, seeds_shown: int = 2) -> Image.Image | None:
    """Per scored attribute, `per_attribute` captions that state it (preferring captions no
    earlier row showed): the caption (with what it asks), then base and LoRA images of the
    first `seeds_shown` seeds, each with what the judge read, framed green when that is what
    the caption asked, red when not. None when no scored attribute is stated."""
    rows = []
    shown = min(seeds_shown, n_seeds)
    shown_items: set[int] = set()
    for attr in attributes:
        stated = [k for k, item in enumerate(items) if item[attr] != A.NA]
        # captions not shown for an earlier attribute first, so the rows show different images
        stated = sorted(stated, key=lambda k: k in shown_items)[:per_attribute]
        shown_items.update(stated)
        for k in stated:
            asked = items[k][attr]
            cells = []
            for model, label in (("base", "base"), ("lora", "LoRA")):
                for s in range(shown):
                    i = k * n_seeds + s
                    read = reads[model][attr][i]
                    cells.append((f"{label} s{s}", images[model][i], read, read == asked))
            rows.append((f"{attr} = {asked}: {items[k]['caption']}", cells))
    return grid(rows, cell=128) if rows else None


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

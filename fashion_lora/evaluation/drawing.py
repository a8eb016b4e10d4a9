"""Base and LoRA images of the chosen held-out captions, read by the judge."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..judge import Judge
from ..sampling import lora_enabled, sample_image

MODELS = ("base", "lora")


@dataclass
class Drawn:
    """Per model, item-major (`seeds` images per item, seeds seed .. seed + seeds - 1): the
    images, what the judge read in each, their judge features and the mean diversity per item."""

    seeds: int
    images: dict[str, list[Image.Image]]
    reads: dict[str, dict[str, list[str]]]
    features: dict[str, torch.Tensor]
    diversity: dict[str, float]


def diversity(images: list[Image.Image]) -> float:
    """Mean pairwise RMS pixel distance (0..1) between images of one prompt: 0 = all identical."""
    arrs = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]
    pairs = list(itertools.combinations(arrs, 2))
    return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in pairs])) if pairs else 0.0


def draw(pipe, judge: Judge, captions: list[str], seeds: int, steps: int, guidance: float, negative: str,
         height: int, width: int, seed: int, fuse: bool = False, max_token_length: int = 77) -> Drawn:
    """Every caption at every seed, the base first (`fuse` merges the LoRA in for its images)."""
    from tqdm import tqdm

    images, reads, feats, divs = {}, {}, {}, {}
    bar = tqdm(total=len(MODELS) * len(captions) * seeds, desc="attribute images", unit="img", mininterval=1.0)
    for name in MODELS:
        bar.set_postfix(model=name, refresh=False)
        imgs, per_item = [], []
        with lora_enabled(pipe, name == "lora", fuse=fuse):
            for caption in captions:
                drawn = []
                for s in range(seeds):
                    drawn.append(sample_image(pipe, caption, negative, steps, guidance, seed + s, height, width,
                                              max_token_length))
                    bar.update(1)
                imgs += drawn
                per_item.append(diversity(drawn))
        images[name] = imgs
        reads[name], feats[name] = judge.read(imgs)
        divs[name] = float(np.mean(per_item))
    bar.close()
    return Drawn(seeds, images, reads, feats, divs)

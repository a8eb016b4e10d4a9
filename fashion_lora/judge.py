"""The attribute judge: a small CNN with one head per attribute, trained on the train split's
images and their labels; evaluate reads generated images with it, and its features feed KID.

Its held-out accuracy per attribute is the ceiling of the attribute metric: an attribute the
judge reads below `judge.min_accuracy` (or with too few labelled held-out images, or with a
single class) is not scored, and the report says why.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from . import attributes as A
from .images import load_rgb, resize_crop
from .params import JudgeParams
from .utils import UserError

log = logging.getLogger(__name__)
WEIGHTS, CONFIG = "judge.safetensors", "config.json"
HELDOUT_FEATURES = "heldout_features.safetensors"  # judge features of the held-out images (KID's reference)
IGNORE = -100  # the target of an NA label: no loss, not scored


class JudgeNet(nn.Module):
    """Four conv blocks (each halves the image), the map pooled to a 6x4 grid at any input size,
    a linear layer over the whole grid (position matters: sleeve and leg lengths are where the
    garment ends), one head per attribute."""

    def __init__(self, classes: dict[str, list[str]], height: int, width: int, features: int = 128):
        super().__init__()
        chans = (3, 24, 48, 64, 64)
        self.convs = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                                                   nn.MaxPool2d(2)) for a, b in zip(chans, chans[1:])])
        self.embed = nn.Sequential(nn.AdaptiveAvgPool2d((6, 4)), nn.Flatten(), nn.Dropout(0.2),
                                   nn.Linear(chans[-1] * 24, features), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(features, len(values)) for name, values in classes.items()})
        self.classes, self.size = classes, (height, width)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 1] -> (N, features): the layer KID compares."""
        return self.embed(self.convs(x * 2 - 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}


def to_input(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Images cropped to cover (height, width) like precompute crops, as floats in [0, 1]."""
    h, w = size
    arrs = [np.asarray(resize_crop(im.convert("RGB"), (w, h), "center")[0]) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255


def _targets(df: pd.DataFrame, classes: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, values in classes.items():
        index = {v: i for i, v in enumerate(values)}
        out[name] = torch.tensor([index.get(v, IGNORE) for v in df[name]], dtype=torch.long)
    return out


def load_images(df: pd.DataFrame, size: tuple[int, int], desc: str) -> torch.Tensor:
    return torch.cat([to_input([load_rgb(Path(p))], size) for p in tqdm(df.image_path, desc=desc, unit="img",
                                                                         mininterval=2)])


@dataclass
class Judge:
    net: JudgeNet
    report: dict  # per attribute: accuracy, chance, items, scored, why not

    @property
    def scored(self) -> list[str]:
        return [a for a, r in self.report["attributes"].items() if r["scored"]]

    def read(self, images: list[Image.Image]) -> tuple[dict[str, list[str]], torch.Tensor]:
        """What the judge reads in each image (attribute -> value per image) and its features."""
        return self.read_input(to_input(images, self.net.size))

    @torch.no_grad()
    def read_input(self, x: torch.Tensor, batch_size: int = 64) -> tuple[dict[str, list[str]], torch.Tensor]:
        """`read` on images already made input by `to_input`."""
        self.net.eval()
        reads: dict[str, list[str]] = {a: [] for a in self.net.classes}
        feats = []
        for s in range(0, len(x), batch_size):
            f = self.net.features(x[s:s + batch_size])
            feats.append(f)
            for a, head in self.net.heads.items():
                reads[a] += [self.net.classes[a][i] for i in head(f).argmax(-1).tolist()]
        return reads, torch.cat(feats)


def majority_rate(labels: list[str]) -> float:
    """The rate of the most common value: the `chance` of an attribute over these labels."""
    return round(Counter(labels).most_common(1)[0][1] / len(labels), 4)


def classes_of(df: pd.DataFrame) -> dict[str, list[str]]:
    """The attributes with at least two labelled values in `df`, and those values (sorted)."""
    out = {}
    for name in A.NAMES:
        values = sorted(v for v in set(df[name]) if v != A.NA)
        if len(values) >= 2:
            out[name] = values
    return out


def train_judge(train: pd.DataFrame, held: pd.DataFrame, settings: JudgeParams, seed: int,
                device: torch.device) -> tuple[Judge, torch.Tensor]:
    """Train on `train`, measure on `held`; returns the judge and its held-out features."""
    size = (settings.height, settings.width)
    classes = classes_of(train)
    report = {"train_images": len(train), "heldout_images": len(held), "size": list(size),
              "min_accuracy": settings.min_accuracy, "min_items": settings.min_items}
    if not classes:  # nothing to learn: a judge that scores nothing, so evaluate skips the metric
        log.warning("judge: no attribute has two labelled values in the train split (no data/raw/labels, and "
                    "no captions in DeepFashion's grammar); the attribute metric is skipped")
        judge = Judge(JudgeNet({}, *size).eval(), {**report, "attributes": score_table({}, held, {}, settings)})
        return judge, torch.zeros(0, judge.net.embed[-2].out_features)
    torch.manual_seed(seed)
    net = JudgeNet(classes, *size).to(device)
    x_train, y_train = load_images(train, size, "judge images (train)"), _targets(train, classes)
    x_held = load_images(held, size, "judge images (held-out)")
    opt = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    steps = settings.epochs * math.ceil(len(x_train) / settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.learning_rate, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="judge", unit="step", mininterval=2)
    net.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for s in range(0, len(order), settings.batch_size):
            idx = order[s:s + settings.batch_size]
            xb = x_train[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5  # the figures are left/right symmetric
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb).to(device)
            out = net(xb)
            loss = sum(F.cross_entropy(out[a], y_train[a][idx].to(device), ignore_index=IGNORE, reduction="sum")
                       for a in classes) / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    net = net.cpu().eval()
    judge = Judge(net, {})
    reads, feats = judge.read_input(x_held)
    judge.report = {**report, "attributes": score_table(classes, held, reads, settings)}
    return judge, feats


def score_table(classes: dict[str, list[str]], held: pd.DataFrame, reads: dict[str, list[str]],
                settings: JudgeParams) -> dict:
    """Per attribute: held-out accuracy (the ceiling), the majority rate (chance), items, and
    whether it is scored; every attribute of the schema is listed, so the report says why one is not."""
    out = {}
    for name in A.NAMES:
        truth = list(held[name])
        items = [i for i, v in enumerate(truth) if v != A.NA]
        row: dict = {"items": len(items)}
        if name not in classes:
            row.update(scored=False, why="fewer than two labelled values in the train split")
        else:
            hits = sum(reads[name][i] == truth[i] for i in items)
            row["accuracy"] = round(hits / len(items), 4) if items else None
            row["chance"] = majority_rate([truth[i] for i in items]) if items else None
            if len(items) < settings.min_items:
                row.update(scored=False, why=f"{len(items)} labelled held-out images, fewer than judge.min_items")
            elif row["accuracy"] < settings.min_accuracy:
                row.update(scored=False, why=f"held-out accuracy {row['accuracy']:.3f} below judge.min_accuracy")
            else:
                row["scored"] = True
        out[name] = row
    return out


def save(judge: Judge, feats: torch.Tensor, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in judge.net.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    save_file({"features": feats.contiguous()}, str(out / HELDOUT_FEATURES))
    (out / CONFIG).write_text(json.dumps({"classes": judge.net.classes, "height": judge.net.size[0],
                                          "width": judge.net.size[1], "report": judge.report}, indent=1))


def load(folder: Path) -> tuple[Judge, torch.Tensor]:
    """The judge of `folder` and its held-out features."""
    from safetensors.torch import load_file

    if not (folder / CONFIG).is_file():
        raise UserError(f"{folder} holds no judge ({CONFIG} missing); run `dvc repro judge`")
    config = json.loads((folder / CONFIG).read_text())
    net = JudgeNet(config["classes"], config["height"], config["width"])
    net.load_state_dict(load_file(str(folder / WEIGHTS)))
    return Judge(net.eval(), config["report"]), load_file(str(folder / HELDOUT_FEATURES))["features"]

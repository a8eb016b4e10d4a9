"""The attribute judge: one head per attribute, trained on the train split's images and their
labels; evaluate reads generated images with it, and its features feed KID.

`judge.backbone: small` is a CNN trained from scratch (offline); a hub id or local folder of a
CLIP vision model is a frozen feature extractor (its features computed once, kept for the heads'
epochs) under linear heads. Its held-out table (`table.score_table`) is the metric's gate and
ceiling: an attribute is scored on the values with enough held-out images, when its balanced
accuracy over them reaches `judge.min_balanced_accuracy`; the report says why one is not.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..devices import worker_count
from ..errors import UserError
from ..params import JudgeParams
from .inputs import as_float, buffer_bytes, load_images, to_input
from .nets import BackboneNet, JudgeNet, load_backbone
from .table import classes_of, majority_rate, score_table

__all__ = ["Judge", "JudgeNet", "BackboneNet", "UserError", "train_judge", "save", "load", "load_backbone",
           "score_table", "majority_rate", "to_input", "load_images", "buffer_bytes"]
log = logging.getLogger(__name__)
WEIGHTS, CONFIG, BACKBONE = "judge.safetensors", "config.json", "backbone"
HELDOUT_FEATURES = "heldout_features.safetensors"  # judge features of the held-out images (KID's reference)
IGNORE = -100  # the target of an NA label: no loss, not scored


@dataclass
class Judge:
    net: JudgeNet | BackboneNet
    report: dict  # per attribute: accuracy, balanced accuracy, per-value recall, scored, why not

    @property
    def scored(self) -> list[str]:
        return [a for a, r in self.report["attributes"].items() if r["scored"]]

    def scored_values(self) -> dict[str, list[str]]:
        """Per scored attribute, the values the metric may ask for (enough held-out images)."""
        return {a: self.report["attributes"][a]["scored_values"] for a in self.scored}

    def read(self, images: list[Image.Image]) -> tuple[dict[str, list[str]], torch.Tensor]:
        """What the judge reads in each image (attribute -> value per image) and its features."""
        return self.read_input(to_input(images, self.net.size))

    @torch.no_grad()
    def read_input(self, x: torch.Tensor, batch_size: int = 64) -> tuple[dict[str, list[str]], torch.Tensor]:
        """`read` on images already made input (uint8 or floats), a batch at a time on the judge's device."""
        self.net.eval()
        device = next(self.net.parameters(), torch.empty(0)).device
        reads: dict[str, list[str]] = {a: [] for a in self.net.classes}
        feats = []
        for s in range(0, len(x), batch_size):
            f = self.net.features(as_float(x[s:s + batch_size]).to(device))
            feats.append(f.cpu())
            for a, head in self.net.heads.items():
                reads[a] += [self.net.classes[a][i] for i in head(f).argmax(-1).tolist()]
        return reads, torch.cat(feats) if feats else torch.zeros(0, self.net.feature_size)


def _targets(df: pd.DataFrame, classes: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, values in classes.items():
        index = {v: i for i, v in enumerate(values)}
        out[name] = torch.tensor([index.get(v, IGNORE) for v in df[name]], dtype=torch.long)
    return out


def _fit(parameters, inputs: torch.Tensor, targets: dict[str, torch.Tensor],
         logits_of: Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]],
         settings: JudgeParams, seed: int, device: torch.device) -> None:
    """AdamW with a one-cycle schedule over `inputs` (images or cached features), seeded batches."""
    opt = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=1e-4)
    steps = settings.epochs * math.ceil(len(inputs) / settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.learning_rate, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="judge", unit="step", mininterval=2)
    for _ in range(settings.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for s in range(0, len(order), settings.batch_size):
            idx = order[s:s + settings.batch_size]
            out = logits_of(inputs[idx], generator)
            loss = sum(F.cross_entropy(out[a], y[idx].to(device), ignore_index=IGNORE, reduction="sum")
                       for a, y in targets.items()) / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()


def _train_small(classes, x_train, targets, settings, seed, device) -> JudgeNet:
    torch.manual_seed(seed)
    net = JudgeNet(classes, settings.height, settings.width).to(device)

    def logits_of(xb: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        xb = as_float(xb)
        flip = torch.rand(len(xb), generator=generator) < 0.5  # the figures are left/right symmetric
        return net(torch.where(flip[:, None, None, None], xb.flip(-1), xb).to(device))

    net.train()
    _fit(net.parameters(), x_train, targets, logits_of, settings, seed, device)
    return net.cpu().eval()


def _train_heads(classes, x_train, targets, settings, seed, device) -> BackboneNet:
    net = BackboneNet(load_backbone(settings.backbone), classes, settings.height, settings.width).to(device)
    torch.manual_seed(seed)
    for head in net.heads.values():
        head.reset_parameters()
    # the backbone is frozen: its features are computed once and the heads train on them
    feats = Judge(net, {}).read_input(x_train)[1]
    _fit(net.heads.parameters(), feats, targets, lambda fb, _: {a: h(fb.to(device)) for a, h in net.heads.items()},
         settings, seed, device)
    return net.eval()


def train_judge(train: pd.DataFrame, held: pd.DataFrame, settings: JudgeParams, seed: int,
                device: torch.device) -> tuple[Judge, torch.Tensor]:
    """Train on `train`, measure on `held`; returns the judge and its held-out features."""
    size = (settings.height, settings.width)
    classes = classes_of(train)
    report = {"train_images": len(train), "heldout_images": len(held), "size": list(size),
              "backbone": settings.backbone, "min_balanced_accuracy": settings.min_balanced_accuracy,
              "min_items": settings.min_items}
    if not classes:  # nothing to learn: a judge that scores nothing, so evaluate skips the metric
        log.warning("judge: no attribute has two labelled values in the train split (no data/raw/labels, and "
                    "no captions in DeepFashion's grammar); the attribute metric is skipped")
        judge = Judge(JudgeNet({}, *size).eval(), {**report, "attributes": score_table({}, held, {}, settings)})
        return judge, torch.zeros(0, judge.net.feature_size)
    log.info("judge images: %.0f MiB as uint8 for %d train and %d held-out images at %dx%d",
             buffer_bytes(len(train) + len(held), size) / 2**20, len(train), len(held), size[1], size[0])
    x_train = load_images(list(train.image_path), size, "judge images (train)", worker_count(settings.workers))
    x_held = load_images(list(held.image_path), size, "judge images (held-out)", worker_count(settings.workers))
    trainer = _train_small if settings.backbone == "small" else _train_heads
    judge = Judge(trainer(classes, x_train, _targets(train, classes), settings, seed, device), {})
    reads, feats = judge.read_input(x_held)
    judge.report = {**report, "attributes": score_table(classes, held, reads, settings)}
    judge.net.cpu()
    return judge, feats


def save(judge: Judge, feats: torch.Tensor, out: Path) -> None:
    """Heads (and the small CNN) as safetensors; a backbone as its own model folder."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = judge.net.state_dict()
    if isinstance(judge.net, BackboneNet):
        judge.net.backbone.save_pretrained(out / BACKBONE)
        state = {k: v for k, v in state.items() if k.startswith("heads.")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / WEIGHTS))
    save_file({"features": feats.contiguous()}, str(out / HELDOUT_FEATURES))
    (out / CONFIG).write_text(json.dumps({"classes": judge.net.classes, "height": judge.net.size[0],
                                          "width": judge.net.size[1], "report": judge.report}, indent=1))


def load(folder: Path) -> tuple[Judge, torch.Tensor]:
    """The judge of `folder` and its held-out features."""
    from safetensors.torch import load_file

    if not (folder / CONFIG).is_file():
        raise UserError(f"{folder} holds no judge ({CONFIG} missing); run `dvc repro judge`")
    config = json.loads((folder / CONFIG).read_text())
    if (folder / BACKBONE).is_dir():
        net = BackboneNet(load_backbone(str(folder / BACKBONE)), config["classes"], config["height"], config["width"])
        net.heads.load_state_dict({k.removeprefix("heads."): v for k, v in load_file(str(folder / WEIGHTS)).items()})
    else:
        net = JudgeNet(config["classes"], config["height"], config["width"])
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
    return Judge(net.eval(), config["report"]), load_file(str(folder / HELDOUT_FEATURES))["features"]

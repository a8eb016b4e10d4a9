"""The judge's readers: `small`, a CNN trained from scratch (the offline default), or a frozen
pretrained image model (`judge.backbone`: a hub id or local folder of a CLIP vision model, e.g.
FashionCLIP) whose features feed one linear head per attribute. Both map floats in [0, 1]
(N, 3, height, width) to features (what KID compares) and to one logit vector per attribute."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation CLIP was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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

    @property
    def feature_size(self) -> int:
        return self.embed[-2].out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 1] -> (N, features): the layer KID compares."""
        return self.embed(self.convs(x * 2 - 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}


def load_backbone(source: str):
    """A CLIP vision model with its projection from a hub id or a local folder (a whole CLIP
    checkpoint such as FashionCLIP's, or a vision model saved by the judge stage), frozen."""
    from transformers import AutoConfig, CLIPConfig, CLIPVisionModelWithProjection

    local = Path(source)
    if (local.exists() or local.is_absolute() or source.startswith(".")) and not (local / "config.json").is_file():
        raise UserError(f"judge.backbone: {local} is not a model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(source)
        if isinstance(config, CLIPConfig):  # a whole CLIP: its vision half, projected to the CLIP's own size
            config = config.vision_config
            config.projection_dim = AutoConfig.from_pretrained(source).projection_dim
        model = CLIPVisionModelWithProjection.from_pretrained(source, config=config)
    except (OSError, ValueError) as e:  # not on the hub, no network, or not a CLIP checkpoint
        raise UserError(f"judge.backbone: cannot load {source!r} as a CLIP vision model ({e}); use a hub id such "
                        "as patrickjohncyh/fashion-clip with network access, a local folder, or `small`") from None
    return model.eval().requires_grad_(False)


class BackboneNet(nn.Module):
    """A frozen CLIP vision model (its projected image embedding, L2-normalised) and one linear
    head per attribute. The image, cropped to the judge's size, is scaled to fit the model's
    square input whole and padded with white (DeepFashion's studio background) rather than
    cropped: sleeves, hems and shoes sit at the portrait's edges."""

    def __init__(self, backbone, classes: dict[str, list[str]], height: int, width: int):
        super().__init__()
        self.backbone = backbone
        dim = backbone.config.projection_dim
        self.heads = nn.ModuleDict({name: nn.Linear(dim, len(values)) for name, values in classes.items()})
        self.classes, self.size = classes, (height, width)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_size(self) -> int:
        return self.backbone.config.projection_dim

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        side = self.backbone.config.image_size
        h, w = x.shape[-2:]
        scale = side / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (side - nh) // 2, (side - nw) // 2
        x = F.pad(x, (left, side - nw - left, top, side - nh - top), value=1.0)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.backbone(pixel_values=self.pixel_values(x)).image_embeds
        return F.normalize(embeds.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}

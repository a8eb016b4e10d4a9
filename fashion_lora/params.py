"""Typed, validated parameters.

`params.yaml` is the only source of defaults: every field below is required in the file, so
a typo or a forgotten key is an error instead of a silently used default. Unknown keys, wrong
types and impossible values raise :class:`ParamError`, whose message names the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

DEVICES = ("auto", "cpu", "cuda")
Device = Literal["auto", "cpu", "cuda"]


class ParamError(ValueError):
    """A parameter is unknown, missing, of the wrong type or out of range."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"params: '{key}' {message}")


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ParamError(key, message)


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticData:
    count: int  # number of synthetic images (a few percent are deliberately bad)
    seed_offset: int  # added to `seed`, so the data can be redrawn without touching others


@dataclass(frozen=True)
class DeepFashionData:
    images_id: str  # Google Drive file id of the images zip
    captions_id: str  # Google Drive file id of captions.json (or a zip holding it)
    images_sha256: Optional[str]  # expected checksum of the images archive; null = log it only
    captions_sha256: Optional[str]  # expected checksum of the captions file; null = log it only


@dataclass(frozen=True)
class LocalData:
    images: Optional[str]  # a folder of images or a .zip of them
    captions: Optional[str]  # a {file_name: caption} .json, or a .zip holding one


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int  # refuse archives that unpack to more than this
    max_ratio: float  # refuse entries whose uncompressed/compressed ratio exceeds this (zip bombs)
    max_entries: int  # refuse archives with more entries than this


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "deepfashion", "local"]
    synthetic: SyntheticData
    deepfashion: DeepFashionData
    local: LocalData
    archive: ArchiveLimits

    def validate(self) -> None:
        _check(self.synthetic.count > 0, "data.synthetic.count", "must be > 0")
        _check(self.archive.max_total_bytes > 0, "data.archive.max_total_bytes", "must be > 0")
        _check(self.archive.max_ratio > 1, "data.archive.max_ratio", "must be > 1")
        _check(self.archive.max_entries > 0, "data.archive.max_entries", "must be > 0")
        if self.source == "local":
            _check(bool(self.local.images), "data.local.images", "must be set when data.source is 'local'")
            _check(bool(self.local.captions), "data.local.captions", "must be set when data.source is 'local'")
        if self.source == "deepfashion":
            _check(bool(self.deepfashion.images_id), "data.deepfashion.images_id", "must be set")
            _check(bool(self.deepfashion.captions_id), "data.deepfashion.captions_id", "must be set")


# ----------------------------------------------------------------------------- model
@dataclass(frozen=True)
class PretrainParams:
    """How the base_model stage pretrains `model.base: tiny` (ignored for any other base)."""

    images: int  # synthetic images drawn for pretraining, from their own seed
    holdout: int  # of those, kept out of training to measure the VAE's PSNR
    seed_offset: int  # added to `seed`; differs from data.synthetic.seed_offset so no image is shared
    neutral_word: str  # replaces every colour word in the base's captions (the withheld attribute)
    vae_steps: int
    vae_batch_size: int
    vae_learning_rate: float
    kl_weight: float  # weight of the KL term against the per-pixel reconstruction MSE
    unet_steps: int
    unet_batch_size: int
    unet_learning_rate: float
    caption_dropout: float  # fraction of empty captions, so classifier-free guidance works

    def validate(self) -> None:
        _check(self.images >= 2, "model.pretrain.images", "must be >= 2")
        _check(1 <= self.holdout < self.images, "model.pretrain.holdout", "must be >= 1 and < model.pretrain.images")
        _check(bool(self.neutral_word.strip()) and self.neutral_word.isalpha(), "model.pretrain.neutral_word",
               "must be one word of letters")
        for key in ("vae_steps", "vae_batch_size", "unet_steps", "unet_batch_size"):
            _check(getattr(self, key) > 0, f"model.pretrain.{key}", "must be > 0")
        for key in ("vae_learning_rate", "unet_learning_rate"):
            _check(0 < getattr(self, key) < 1, f"model.pretrain.{key}", "must be in (0, 1)")
        _check(self.kl_weight >= 0, "model.pretrain.kl_weight", "must be >= 0")
        _check(0 <= self.caption_dropout < 1, "model.pretrain.caption_dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class ModelParams:
    base: str  # 'tiny' (pretrained here) | 'tiny-random' | a hub id | a local diffusers folder
    pretrain: PretrainParams


# ----------------------------------------------------------------------------- filter
@dataclass(frozen=True)
class FilterParams:
    min_resolution: int  # minimum width and height in pixels
    min_caption_length: int  # minimum caption length in characters, after whitespace cleaning
    sample_size: int  # seeded sample of this many rows after filtering (all if fewer)
    val_fraction: float  # about this fraction of rows goes to val, grouped by product id
    formats: list[str]  # allowed PIL formats
    non_rgb: Literal["drop", "convert"]  # what to do with grayscale/RGBA/palette/CMYK originals
    max_pixels: int  # larger declared sizes are refused as decompression bombs
    workers: int  # processes used to decode images
    export_zip: bool  # also write data/export/fashion_subset.zip (kept images + CSV)

    def validate(self) -> None:
        _check(self.min_resolution > 0, "filter.min_resolution", "must be > 0")
        _check(self.min_caption_length >= 0, "filter.min_caption_length", "must be >= 0")
        _check(self.sample_size > 0, "filter.sample_size", "must be > 0")
        _check(0 < self.val_fraction < 1, "filter.val_fraction", "must be in (0, 1)")
        _check(len(self.formats) > 0, "filter.formats", "must name at least one format")
        _check(self.max_pixels > 0, "filter.max_pixels", "must be > 0")
        _check(self.workers >= 1, "filter.workers", "must be >= 1")


# ----------------------------------------------------------------------------- precompute
@dataclass(frozen=True)
class Enhance:
    sharpness: float  # PIL ImageEnhance factors; 1.0 = unchanged
    contrast: float
    color: float


@dataclass(frozen=True)
class PrecomputeParams:
    resolution: int  # square training size in pixels (multiple of 8)
    crop: Literal["center", "top"]  # where to crop after the aspect-preserving resize
    batch_size: int  # VAE encode batch
    device: Device
    dtype: Literal["float16", "float32"]  # latent dtype on disk
    shard_size: int  # latents per .pt shard
    workers: int  # processes preparing images
    min_side: int  # quality: shorter side of the original at least this
    min_sharpness: float  # quality: Laplacian variance of the grey image at least this
    min_aspect: float  # quality: width/height within [min_aspect, max_aspect]
    max_aspect: float
    enhance: Enhance

    def validate(self) -> None:
        _check(self.resolution >= 8 and self.resolution % 8 == 0, "precompute.resolution",
               "must be a positive multiple of 8")
        _check(self.batch_size >= 1, "precompute.batch_size", "must be >= 1")
        _check(self.shard_size >= 1, "precompute.shard_size", "must be >= 1")
        _check(self.workers >= 1, "precompute.workers", "must be >= 1")
        _check(self.min_side >= 1, "precompute.min_side", "must be >= 1")
        _check(self.min_sharpness >= 0, "precompute.min_sharpness", "must be >= 0")
        _check(0 < self.min_aspect <= self.max_aspect, "precompute.min_aspect",
               "must be > 0 and <= precompute.max_aspect")
        for name in ("sharpness", "contrast", "color"):
            _check(getattr(self.enhance, name) > 0, f"precompute.enhance.{name}", "must be > 0")


# ----------------------------------------------------------------------------- train
@dataclass(frozen=True)
class LoraParams:
    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]

    def validate(self) -> None:
        _check(self.rank >= 1, "train.lora.rank", "must be >= 1")
        _check(self.alpha > 0, "train.lora.alpha", "must be > 0")
        _check(0 <= self.dropout < 1, "train.lora.dropout", "must be in [0, 1)")
        _check(len(self.target_modules) > 0, "train.lora.target_modules", "must not be empty")


@dataclass(frozen=True)
class LatentAugment:
    noise_prob: float  # probability of adding Gaussian noise to a latent
    noise_std: float
    hflip_prob: float
    crop_prob: float  # probability of a random crop resized back to full size
    crop_min_scale: float  # smallest crop side as a fraction of the latent side

    def validate(self) -> None:
        for name in ("noise_prob", "hflip_prob", "crop_prob"):
            v = getattr(self, name)
            _check(0 <= v <= 1, f"train.augment.{name}", "must be in [0, 1]")
        _check(self.noise_std >= 0, "train.augment.noise_std", "must be >= 0")
        _check(0 < self.crop_min_scale <= 1, "train.augment.crop_min_scale", "must be in (0, 1]")


@dataclass(frozen=True)
class CaptionAugment:
    quality_terms: list[str]  # appended (one, at random) with probability quality_prob
    quality_prob: float
    dropout_prob: float  # caption replaced by "" (teaches unconditional guidance)

    def validate(self) -> None:
        _check(0 <= self.quality_prob <= 1, "train.captions.quality_prob", "must be in [0, 1]")
        _check(0 <= self.dropout_prob <= 1, "train.captions.dropout_prob", "must be in [0, 1]")
        _check(self.quality_prob == 0 or len(self.quality_terms) > 0, "train.captions.quality_terms",
               "must not be empty when train.captions.quality_prob > 0")


@dataclass(frozen=True)
class EarlyStopping:
    patience: int  # validations without improvement before stopping
    min_delta: float  # an improvement must lower val MSE by more than this


@dataclass(frozen=True)
class TrainSamples:
    every: int  # generate a sample every N validations; 0 = off
    prompt: str
    steps: int
    guidance_scale: float
    seed: int


@dataclass(frozen=True)
class TrainParams:
    device: Device
    mixed_precision: Literal["auto", "no", "fp16", "bf16"]  # auto: fp16 on CUDA, none on CPU
    max_steps: int
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    betas: list[float]
    weight_decay: float
    warmup_steps: int
    restart_period: int  # CosineAnnealingWarmRestarts T_0, in optimizer steps after warmup
    restart_mult: int  # T_mult
    min_lr: float  # eta_min
    max_grad_norm: float
    min_snr_gamma: Optional[float]  # null = plain MSE
    noise_offset: float  # 0 = off
    timestep_bias: float  # timestep density ~ t^(bias-1); 1 = uniform, > 1 favours high noise
    val_every: int
    val_repeats: int  # fixed (noise, timestep) draws per val latent
    checkpoint_every: int
    gradient_checkpointing: bool  # recompute activations in backward: less memory, ~30% slower
    optimizer: Literal["adamw", "adamw8bit"]  # adamw8bit needs bitsandbytes (CUDA)
    compile: bool  # torch.compile the UNet (GPU; first steps are slow while it compiles)
    lora: LoraParams
    augment: LatentAugment
    captions: CaptionAugment
    early_stopping: EarlyStopping
    samples: TrainSamples  # images while training, logged to dvclive per step

    def validate(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.gradient_accumulation >= 1, "train.gradient_accumulation", "must be >= 1")
        _check(self.learning_rate > 0, "train.learning_rate", "must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
               "must be two numbers in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(self.restart_period >= 1, "train.restart_period", "must be >= 1")
        _check(self.restart_mult >= 1, "train.restart_mult", "must be >= 1")
        _check(0 <= self.min_lr <= self.learning_rate, "train.min_lr", "must be in [0, train.learning_rate]")
        _check(self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
        _check(self.min_snr_gamma is None or self.min_snr_gamma > 0, "train.min_snr_gamma",
               "must be > 0 or null")
        _check(self.noise_offset >= 0, "train.noise_offset", "must be >= 0")
        _check(0 < self.timestep_bias <= 10, "train.timestep_bias", "must be in (0, 10] (1 = uniform)")
        _check(self.val_every >= 1, "train.val_every", "must be >= 1")
        _check(self.val_repeats >= 1, "train.val_repeats", "must be >= 1")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
        _check(self.samples.every >= 0, "train.samples.every", "must be >= 0")
        _check(self.samples.steps >= 1, "train.samples.steps", "must be >= 1")
        _check(self.early_stopping.patience >= 1, "train.early_stopping.patience", "must be >= 1")
        _check(self.early_stopping.min_delta >= 0, "train.early_stopping.min_delta", "must be >= 0")
        self.lora.validate()
        self.augment.validate()
        self.captions.validate()


# ----------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateParams:
    device: Device
    repeats: int  # fixed (noise, timestep) draws per val latent
    timestep_bands: int  # loss is also reported per band of [0, T)
    batch_size: int
    attribute_prompts: int  # colour prompts generated for the attribute metric (0 = off)
    attribute_steps: int  # sampling steps for those images
    attribute_seeds: int  # images per colour prompt (seeds seed .. seed + n - 1)
    clip_model: Optional[str]  # local CLIP folder for a CLIP score; null = off

    def validate(self) -> None:
        _check(self.repeats >= 1, "evaluate.repeats", "must be >= 1")
        _check(self.timestep_bands >= 1, "evaluate.timestep_bands", "must be >= 1")
        _check(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        _check(self.attribute_prompts >= 0, "evaluate.attribute_prompts", "must be >= 0")
        _check(self.attribute_steps >= 1, "evaluate.attribute_steps", "must be >= 1")
        _check(self.attribute_seeds >= 1, "evaluate.attribute_seeds", "must be >= 1")


# ----------------------------------------------------------------------------- generate
@dataclass(frozen=True)
class GenerateParams:
    device: Device
    prompts: list[str]
    negative_prompt: str
    steps: list[int]
    guidance_scale: float
    seed: int
    height: int
    width: int

    def validate(self) -> None:
        _check(len(self.prompts) > 0, "generate.prompts", "must not be empty")
        _check(len(self.steps) > 0 and all(s >= 1 for s in self.steps), "generate.steps",
               "must be a non-empty list of positive step counts")
        _check(self.guidance_scale >= 0, "generate.guidance_scale", "must be >= 0")
        for key in ("height", "width"):
            v = getattr(self, key)
            _check(v >= 8 and v % 8 == 0, f"generate.{key}", "must be a positive multiple of 8")


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    model: ModelParams
    filter: FilterParams
    precompute: PrecomputeParams
    train: TrainParams
    evaluate: EvaluateParams
    generate: GenerateParams

    def validate(self) -> None:
        _check(self.seed >= 0, "seed", "must be >= 0")
        _check(bool(self.model.base), "model.base", "must not be empty")
        self.model.pretrain.validate()
        for f in fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()


# ----------------------------------------------------------------------------- loading
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            _check(type(None) in args, key, "must not be null")
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if value is None:
        raise ParamError(key, f"must be a {_type_name(tp)}, got null")
    if origin is Literal:
        _check(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        _check(isinstance(value, list), key, f"must be a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key,
               f"must be an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {tp} for {key}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamError(where, f"must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for k in raw:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else str(k)
            raise ParamError(full, f"is not a known parameter (known here: {', '.join(names)})")
    values = {}
    for name in names:
        full = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            raise ParamError(full, "is missing")
        values[name] = _convert(raw[name], hints[name], full)
    return cls(**values)


def parse_params(raw: Any) -> Params:
    """Build and validate :class:`Params` from a parsed YAML mapping."""
    params = _build(Params, raw, "")
    params.validate()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, type-check and validate a params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamError(str(path), "does not exist: run from the repository root") from None
    except yaml.YAMLError as e:
        raise ParamError(str(path), f"is not valid YAML: {e}") from None
    return parse_params(raw)


def to_dict(obj: Any) -> dict:
    """Plain-dict view of a params object (for reports and fingerprints)."""
    return dataclasses.asdict(obj)

"""Typed, validated parameters.

`params.yaml` is the only source of defaults: every field below is required in the file, so
a typo or a forgotten key is an error instead of a silently used default. Unknown keys, wrong
types and impossible values raise :class:`ParamError`, whose message names the dotted key.

Each field's allowed values are declared next to it (`limits(...)`) and checked by one
routine that knows the dotted key; only rules that relate two fields are written out, in the
sections' `validate()`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .attributes import NAMES

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]  # inference weights; auto = fp16 on CUDA, fp32 on CPU
Workers = int | Literal["auto"]  # process count; auto = the machine's cores


class ParamError(ValueError):
    """A parameter is unknown, missing, of the wrong type or out of range."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"params: '{key}' {message}")


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ParamError(key, message)


@dataclass(frozen=True)
class Limits:
    """The allowed values of one field: bounds, non-empty, or any one-field predicate."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nonempty: bool = False
    check: Callable[[Any], bool] | None = None
    message: str | None = None  # replaces the message built from the bounds

    def allows(self, v: Any) -> bool:
        # Written as "v >= bound" etc. so that NaN fails every bound.
        bounds = ((self.ge, lambda: v >= self.ge), (self.gt, lambda: v > self.gt),
                  (self.le, lambda: v <= self.le), (self.lt, lambda: v < self.lt))
        return ((not self.nonempty or len(v) > 0) and (self.check is None or self.check(v))
                and all(bound is None or holds() for bound, holds in bounds))

    def describe(self) -> str:
        if self.message:
            return self.message
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        high = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        if low and high:
            return f"must be in {low}, {high}"
        if low:
            return f"must be {'>=' if self.ge is not None else '>'} {low[1:]}"
        if high:
            return f"must be {'<=' if self.le is not None else '<'} {high[:-1]}"
        return "must not be empty"


def limits(**kw: Any) -> Any:
    """A dataclass field with declared limits, e.g. `rank: int = limits(ge=1)`."""
    return field(metadata={"limits": Limits(**kw)})


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticData:
    count: int = limits(gt=0)  # number of synthetic images (a few percent are deliberately bad)
    seed_offset: int  # added to `seed`, so the data can be redrawn without touching others
    # uniform: every drawn value equally likely; deepfashion: the data set's proportions (52-79%
    # pure color and cotton), to see what the attribute metric says on imbalanced data
    frequencies: Literal["uniform", "deepfashion"]


@dataclass(frozen=True)
class DeepFashionData:
    images_id: str  # Google Drive file id of the images zip
    captions_id: str  # Google Drive file id of captions.json (or a zip holding it)
    labels_id: str | None  # Google Drive file id of the labels folder's zip; null = captions only
    images_sha256: str | None  # expected checksum of the images archive; null = log it only
    captions_sha256: str | None  # expected checksum of the captions file; null = log it only
    labels_sha256: str | None  # expected checksum of the labels zip; null = log it only


@dataclass(frozen=True)
class LocalData:
    images: str | None  # a folder of images or a .zip of them
    captions: str | None  # a {file_name: caption} .json, or a .zip holding one
    labels: str | None  # optional: a folder (or .zip) with the data set's label files; null = none


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = limits(gt=0)  # refuse archives that unpack to more than this
    max_ratio: float = limits(gt=1)  # refuse entries whose uncompressed/compressed ratio exceeds this (zip bombs)
    max_entries: int = limits(gt=0)  # refuse archives with more entries than this


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "deepfashion", "local"]
    synthetic: SyntheticData
    deepfashion: DeepFashionData
    local: LocalData
    archive: ArchiveLimits

    def validate(self) -> None:
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

    images: int = limits(ge=2)  # synthetic images drawn for pretraining, from their own seed
    holdout: int  # of those, kept out of training to measure the VAE's PSNR
    seed_offset: int  # added to `seed`; differs from data.synthetic.seed_offset so no image is shared
    # attributes (attributes.NAMES) whose words the base's captions never hold: the LoRA must teach them
    withheld: list[str] = limits(check=lambda names: len(set(names)) == len(names) and all(n in NAMES for n in names),
                                 message="must be distinct attribute names from fashion_lora/attributes.py (e.g. hat)")
    # replaces the withheld attributes' words in the base's captions
    neutral_word: str = limits(check=lambda w: bool(w.strip()) and w.isalpha(), message="must be one word of letters")
    vae_steps: int = limits(gt=0)
    vae_batch_size: int = limits(gt=0)
    vae_learning_rate: float = limits(gt=0, lt=1)
    kl_weight: float = limits(ge=0)  # weight of the KL term against the per-pixel reconstruction MSE
    unet_steps: int = limits(gt=0)
    unet_batch_size: int = limits(gt=0)
    unet_learning_rate: float = limits(gt=0, lt=1)
    text_encoder: bool  # train the tiny CLIP text encoder with the UNet (else it stays at its random init)
    caption_dropout: float = limits(ge=0, lt=1)  # fraction of empty captions, so classifier-free guidance works

    def validate(self) -> None:
        _check(1 <= self.holdout < self.images, "model.pretrain.holdout", "must be >= 1 and < model.pretrain.images")


@dataclass(frozen=True)
class ModelParams:
    base: str = limits(nonempty=True)  # 'tiny' (pretrained here) | 'tiny-random' | a hub id | a local diffusers folder
    pretrain: PretrainParams


# ----------------------------------------------------------------------------- filter
@dataclass(frozen=True)
class FilterParams:
    min_resolution: int = limits(gt=0)  # minimum width and height in pixels
    min_caption_length: int = limits(ge=0)  # minimum caption length in characters, after whitespace cleaning
    sample_size: int = limits(gt=0)  # seeded sample of this many rows after filtering (all if fewer)
    val_fraction: float = limits(gt=0, lt=1)  # about this fraction of rows goes to val, grouped by product id
    formats: list[str] = limits(nonempty=True, message="must name at least one format")  # allowed PIL formats
    non_rgb: Literal["drop", "convert"]  # what to do with grayscale/RGBA/palette/CMYK originals
    max_pixels: int = limits(gt=0)  # larger declared sizes are refused as decompression bombs
    workers: int = limits(ge=1)  # processes used to decode images
    export_zip: bool  # also write data/export/fashion_subset.zip (kept images + CSV)


# ----------------------------------------------------------------------------- precompute
MULTIPLE_OF_8 = dict(check=lambda v: v >= 8 and v % 8 == 0, message="must be a positive multiple of 8")


@dataclass(frozen=True)
class Enhance:
    sharpness: float = limits(gt=0)  # PIL ImageEnhance factors; 1.0 = unchanged
    contrast: float = limits(gt=0)
    color: float = limits(gt=0)


@dataclass(frozen=True)
class PrecomputeParams:
    resolution: int = limits(**MULTIPLE_OF_8)  # training size in pixels: the square's side, the buckets' scale
    shape: Literal["buckets", "square"]  # buckets: each image at the bucket of its aspect; square: one square crop
    bucket_size: Literal["short_side", "area"]  # short_side: shorter side = resolution; area: ~resolution^2 pixels
    crop: Literal["center", "top"]  # where to crop after the aspect-preserving resize
    batch_size: int = limits(ge=1)  # VAE encode batch
    device: Device
    dtype: Literal["float16", "float32"]  # latent dtype on disk
    shard_size: int = limits(ge=1)  # latents per .pt shard
    workers: Workers = limits(ge=1)  # threads preparing images while the VAE encodes; auto = the cores
    precision: Precision  # VAE weights while encoding; auto = fp16 on CUDA, fp32 on CPU
    min_side: int = limits(ge=1)  # quality: shorter side of the original at least this
    min_sharpness: float = limits(ge=0)  # quality: Laplacian variance of the grey image at least this
    min_aspect: float  # quality: width/height within [min_aspect, max_aspect]
    max_aspect: float
    enhance: Enhance
    flipped: bool  # also encode each image mirrored: train's flips then use it, not the mirrored latent

    def validate(self) -> None:
        _check(0 < self.min_aspect <= self.max_aspect, "precompute.min_aspect",
               "must be > 0 and <= precompute.max_aspect")


# ----------------------------------------------------------------------------- train
@dataclass(frozen=True)
class LoraParams:
    rank: int = limits(ge=1)
    alpha: float = limits(gt=0)
    dropout: float = limits(ge=0, lt=1)
    target_modules: list[str] = limits(nonempty=True)
    use_dora: bool  # DoRA (peft): LoRA on the direction, a learned magnitude per output channel


@dataclass(frozen=True)
class TextEncoderLoraParams:
    enabled: bool  # LoRA on the CLIP text encoder too; its embeddings are then computed every step
    rank: int = limits(ge=1)
    alpha: float = limits(gt=0)
    dropout: float = limits(ge=0, lt=1)
    target_modules: list[str] = limits(nonempty=True)  # CLIP: q_proj, k_proj, v_proj, out_proj, fc1, fc2
    learning_rate: float | None = limits(gt=0)  # null = train.learning_rate; the same schedule either way


@dataclass(frozen=True)
class EmaParams:
    enabled: bool  # validation, best-by-val, the saved adapter and evaluate use the moving average
    decay: float = limits(gt=0, lt=1)
    warmup: bool  # the decay ramps up as (1 + step) / (10 + step) until it reaches `decay`


@dataclass(frozen=True)
class LatentAugment:
    noise_prob: float = limits(ge=0, le=1)  # probability of adding Gaussian noise to a latent
    noise_std: float = limits(ge=0)
    hflip_prob: float = limits(ge=0, le=1)
    crop_prob: float = limits(ge=0, le=1)  # probability of a random crop resized back to full size
    crop_min_scale: float = limits(gt=0, le=1)  # smallest crop side as a fraction of the latent side


@dataclass(frozen=True)
class CaptionAugment:
    quality_terms: list[str]  # appended (one, at random) with probability quality_prob
    quality_prob: float = limits(ge=0, le=1)
    dropout_prob: float = limits(ge=0, le=1)  # caption replaced by "" (teaches unconditional guidance)

    def validate(self) -> None:
        _check(self.quality_prob == 0 or len(self.quality_terms) > 0, "train.captions.quality_terms",
               "must not be empty when train.captions.quality_prob > 0")


@dataclass(frozen=True)
class EarlyStopping:
    patience: int = limits(ge=1)  # validations without improvement before stopping
    min_delta: float = limits(ge=0)  # an improvement must lower val MSE by more than this


@dataclass(frozen=True)
class TrainSamples:
    every: int = limits(ge=0)  # generate a sample every N validations; 0 = off
    prompt: str
    steps: int = limits(ge=1)
    guidance_scale: float
    seed: int


@dataclass(frozen=True)
class TrainParams:
    device: Device
    mixed_precision: Literal["auto", "no", "fp16", "bf16"]  # auto: fp16 on CUDA (measured faster than bf16), none on CPU
    max_steps: int = limits(ge=1)
    batch_size: int = limits(ge=1)
    gradient_accumulation: int = limits(ge=1)
    learning_rate: float = limits(gt=0)
    betas: list[float] = limits(check=lambda b: len(b) == 2 and all(0 <= x < 1 for x in b),
                                message="must be two numbers in [0, 1)")
    weight_decay: float = limits(ge=0)
    warmup_steps: int = limits(ge=0)
    restart_period: int | None = limits(ge=1)  # cosine restart period T_0 (steps); null = train.max_steps
    restart_mult: int = limits(ge=1)  # T_mult
    min_lr: float  # eta_min
    max_grad_norm: float = limits(gt=0)
    min_snr_gamma: float | None = limits(gt=0)  # null = plain MSE
    noise_offset: float = limits(ge=0)  # 0 = off
    # timestep density ~ t^(bias-1); 1 = uniform, > 1 favours high noise
    timestep_bias: float = limits(gt=0, le=10, message="must be in (0, 10] (1 = uniform)")
    # tokens per caption: 77 as SD; 154 or 231 = two or three 75-token windows (kohya), in training,
    # validation, evaluate, generate and the CLI; auto = the smallest that holds every caption of
    # the filtered CSV (measured by filter, reports/caption_tokens.json; recorded in the adapter)
    max_token_length: Literal["auto", 77, 154, 231]
    val_every: int = limits(ge=1)
    val_repeats: int = limits(ge=1)  # fixed (noise, timestep) draws per val latent
    checkpoint_every: int = limits(ge=1)
    gradient_checkpointing: bool  # recompute activations in backward: less memory, ~30% slower
    optimizer: Literal["adamw", "adamw8bit"]  # adamw8bit needs bitsandbytes (CUDA)
    # torch.compile: 'regional' compiles each repeated UNet block once (short compile), 'full'
    # the whole UNet; the first steps are slow while it compiles (reported apart)
    compile: Literal["none", "regional", "full"]
    cuda_graphs: bool  # with compile: replay the compiled graphs as CUDA graphs (fewer kernel launches)
    sync_every: int = limits(ge=1)  # steps between reads of the loss from the GPU (each step is still logged)
    data_on_device: bool  # train latents on the GPU when they fit (else host memory, copied per step)
    lora: LoraParams
    text_encoder_lora: TextEncoderLoraParams
    ema: EmaParams  # exponential moving average of the LoRA weights
    augment: LatentAugment
    captions: CaptionAugment
    early_stopping: EarlyStopping
    samples: TrainSamples  # images while training, logged to dvclive per step

    def validate(self) -> None:
        _check(0 <= self.min_lr <= self.learning_rate, "train.min_lr", "must be in [0, train.learning_rate]")
        _check(not self.cuda_graphs or self.compile != "none", "train.cuda_graphs",
               "needs train.compile: regional or full (CUDA graphs replay compiled graphs)")

    @property
    def cosine_period(self) -> int:
        """`restart_period`, or the whole run when it is null (so a shorter run still anneals)."""
        return self.restart_period if self.restart_period is not None else self.max_steps


# ----------------------------------------------------------------------------- judge
@dataclass(frozen=True)
class JudgeParams:
    device: Device
    height: int = limits(ge=16)  # images are cropped to cover this size (like precompute) before the judge
    width: int = limits(ge=16)
    epochs: int = limits(ge=1)
    batch_size: int = limits(ge=1)
    learning_rate: float = limits(gt=0, lt=1)
    # `small` (a CNN trained here, offline) or the hub id / local folder of a CLIP vision model
    # (e.g. patrickjohncyh/fashion-clip): frozen features under one linear head per attribute
    backbone: str = limits(nonempty=True)
    workers: Workers = limits(ge=1)  # threads decoding the judge's images; auto = the cores
    # attributes read worse than this (the mean per-value recall on held-out images) are not scored
    min_balanced_accuracy: float = limits(ge=0, le=1)
    min_items: int = limits(ge=1)  # held-out images a value needs to be scored (and asked for)


# ----------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateParams:
    device: Device
    precision: Precision  # of the pipeline drawing the attribute images (val losses stay fp32)
    repeats: int = limits(ge=1)  # fixed (noise, timestep) draws per val latent
    timestep_bands: int = limits(ge=1)  # loss is also reported per band of [0, T)
    batch_size: int = limits(ge=1)
    # held-out captions drawn for each value of each scored attribute (rarest values first; a caption
    # counts for every value it states) for the attribute metric; 0 = off
    captions_per_value: int = limits(ge=0)
    attribute_steps: int = limits(ge=1)  # sampling steps for those images
    attribute_seeds: int = limits(ge=1)  # images per caption (seeds seed .. seed + n - 1)
    clip_model: str | None  # local CLIP folder for a CLIP score; null = off


# ----------------------------------------------------------------------------- generate
@dataclass(frozen=True)
class GenerateParams:
    device: Device
    precision: Precision
    fuse_lora: bool  # merge the LoRA into the UNet weights for the LoRA images (faster; base images first)
    cuda_graphs: bool  # GPU: replay the UNet as a CUDA graph per image size (fewer kernel launches)
    prompts: list[str] = limits(nonempty=True)
    negative_prompt: str
    steps: list[int] = limits(check=lambda s: len(s) > 0 and all(n >= 1 for n in s),
                              message="must be a non-empty list of positive step counts")
    guidance_scale: float = limits(ge=0)
    seed: int
    height: int | Literal["auto"] = limits(**MULTIPLE_OF_8)  # auto = the most common train bucket
    width: int | Literal["auto"] = limits(**MULTIPLE_OF_8)


@dataclass(frozen=True)
class Params:
    seed: int = limits(ge=0)
    # torch CPU threads of every stage; float results depend on it (measured), so a fixed count
    # gives the same dvc.lock on any machine. null = torch's default (all cores).
    cpu_threads: int | None = limits(ge=1)
    data: DataParams
    model: ModelParams
    filter: FilterParams
    precompute: PrecomputeParams
    train: TrainParams
    judge: JudgeParams
    evaluate: EvaluateParams
    generate: GenerateParams


# ----------------------------------------------------------------------------- loading
YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, _type_name(tp))


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
        if len(inner) == 1:
            return _convert(value, inner[0], key)
        for alternative in inner:  # e.g. `int | Literal["auto"]`: the first that accepts it
            try:
                return _convert(value, alternative, key)
            except ParamError:
                pass
        raise ParamError(key, f"must be {' or '.join(_describe(a) for a in inner)}, got {value!r}")
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
        if isinstance(value, str) and YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # `1e-4`: YAML 1.1 (PyYAML) reads exponents without a dot as strings
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
    for f in fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in raw:
            raise ParamError(full, "is missing")
        values[f.name] = value = _convert(raw[f.name], hints[f.name], full)
        rule: Limits | None = f.metadata.get("limits")
        # in `int | Literal["auto"]` the limits bound the number; the word passed its Literal already
        word = isinstance(value, str) and typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType)
        if rule is not None and value is not None and not word and not rule.allows(value):
            nullable = type(None) in typing.get_args(hints[f.name])
            raise ParamError(full, rule.describe() + (" or null" if nullable else ""))
    return cls(**values)


def _validate(section: Any) -> None:
    """Run the cross-field rules (`validate()`) of every section, outermost first."""
    if hasattr(section, "validate"):
        section.validate()
    for f in fields(section):
        child = getattr(section, f.name)
        if dataclasses.is_dataclass(child):
            _validate(child)


def parse_params(raw: Any) -> Params:
    """Build and validate :class:`Params` from a parsed YAML mapping."""
    params = _build(Params, raw, "")
    _validate(params)
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

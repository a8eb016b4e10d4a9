"""Image validation, quality checks, enhancement and aspect-preserving resize/crop."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .buckets import Bucket, cover_box, nearest_bucket
from .params import PrecomputeParams

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ImageInfo:
    """What the filter learns about one file; `reason` is None when it passes."""

    reason: str | None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0


def inspect_image(path: Path, formats: list[str], min_resolution: int, non_rgb: str,
                  max_pixels: int) -> ImageInfo:
    """Open and fully decode `path`; return the first rule it breaks, or pass.

    The mode is read from the original file before any conversion, so a grayscale or RGBA
    original is never mistaken for RGB. Sizes are taken after the EXIF orientation.
    """
    if not path.is_file():
        return ImageInfo("missing_image")
    if path.stat().st_size == 0:
        return ImageInfo("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt, mode = img.format, img.mode
                w, h = img.size
                if w * h > max_pixels:  # refuse before decoding a single pixel
                    return ImageInfo("decompression_bomb", fmt, mode, w, h)
                if fmt not in formats:
                    return ImageInfo("bad_format", fmt, mode, w, h)
                if getattr(img, "n_frames", 1) > 1:
                    return ImageInfo("animated", fmt, mode, w, h)
                img.load()  # decode every byte: a truncated file fails here, not at train time
                w, h = ImageOps.exif_transpose(img).size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return ImageInfo("decompression_bomb")
    except Image.UnidentifiedImageError:
        return ImageInfo("not_an_image")
    except (OSError, SyntaxError, ValueError, EOFError):
        return ImageInfo("undecodable")
    if mode != "RGB" and non_rgb == "drop":
        return ImageInfo("not_rgb", fmt, mode, w, h)
    if w < min_resolution or h < min_resolution:
        return ImageInfo("too_small", fmt, mode, w, h)
    return ImageInfo(None, fmt, mode, w, h)


def load_rgb(path: Path) -> Image.Image:
    """Decode with EXIF orientation applied; non-RGB modes are flattened onto white."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        if img.mode.startswith("I") or img.mode == "F":
            # 16-bit / float greyscale: scale to 8 bits instead of clipping at 255
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            return Image.fromarray(np.clip(arr / top * 255, 0, 255).astype(np.uint8)).convert("RGB")
        return img.convert("RGB")


def sharpness(img: Image.Image) -> float:
    """Variance of the Laplacian of the grey image: low for blurry or flat pictures."""
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    lap = (-4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:])
    return float(lap.var())


def quality_reason(img: Image.Image, min_side: int, min_sharpness: float, min_aspect: float,
                   max_aspect: float) -> str | None:
    """The first quality rule `img` breaks (precompute's drop reason), or None."""
    w, h = img.size
    if min(w, h) < min_side:
        return "too_small"
    aspect = w / h
    if not (min_aspect <= aspect <= max_aspect):
        return "bad_aspect"
    if sharpness(img) < min_sharpness:
        return "blurry"
    return None


def enhance(img: Image.Image, sharpness_f: float, contrast_f: float, color_f: float) -> Image.Image:
    """PIL enhancement; factors of 1.0 skip the step so the default changes no pixel."""
    if sharpness_f != 1.0:
        img = ImageEnhance.Sharpness(img).enhance(sharpness_f)
    if contrast_f != 1.0:
        img = ImageEnhance.Contrast(img).enhance(contrast_f)
    if color_f != 1.0:
        img = ImageEnhance.Color(img).enhance(color_f)
    return img


def resize_crop(img: Image.Image, bucket: tuple[int, int], crop: str) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Scale `img` to cover `bucket` (width, height) without squashing, then crop it to the bucket.

    Returns the crop and its box in original-image pixels (left, top, right, bottom).
    `center` keeps the middle; `top` keeps the top (heads) of tall portraits.
    """
    scale, size, box = cover_box(img.width, img.height, bucket, crop)  # type: ignore[arg-type]
    resized = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    orig = tuple(int(round(v / scale)) for v in box)
    return resized.crop(box), orig  # type: ignore[return-value]


def area_kept(box: tuple[int, int, int, int], size: tuple[int, int]) -> float:
    """Fraction of the original image's area inside the crop `box` (original pixels)."""
    return min(1.0, (box[2] - box[0]) * (box[3] - box[1]) / (size[0] * size[1]))


def to_vae_input(pixels: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float [-1, 1] NCHW, what a VAE encoder takes."""
    import torch

    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@dataclass
class Prepared:
    row: int
    reason: str | None
    pixels: np.ndarray | None = None  # uint8 [h, w, 3] of the bucket
    crop: tuple[int, int, int, int] | None = None
    orig_size: tuple[int, int] | None = None
    bucket: Bucket | None = None  # (width, height)


def prepare(row: int, path: str, settings: PrecomputeParams, buckets: list[Bucket]) -> Prepared:
    """Load one image, apply quality checks and enhancement, and crop it to the bucket of
    nearest aspect (resized to cover it, never squashed)."""
    try:
        img = load_rgb(Path(path))
    except (OSError, ValueError):
        return Prepared(row, "undecodable")
    reason = quality_reason(img, settings.min_side, settings.min_sharpness, settings.min_aspect, settings.max_aspect)
    if reason:
        return Prepared(row, reason)
    img = enhance(img, settings.enhance.sharpness, settings.enhance.contrast, settings.enhance.color)
    bucket = nearest_bucket(img.width, img.height, buckets)
    pixels, box = resize_crop(img, bucket, settings.crop)
    return Prepared(row, None, np.asarray(pixels, dtype=np.uint8), box, img.size, bucket)

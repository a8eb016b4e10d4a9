"""The judge's images: cropped to the judge's size like precompute crops, held as uint8 in one
preallocated buffer (a float copy of every train image is what made 44k photos 13 GB), decoded
by a pool of threads, and turned into floats one batch at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..images import load_rgb, resize_crop


def to_uint8(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(3, height, width) uint8: the image scaled to cover `size` (height, width) and centre-cropped."""
    h, w = size
    return np.ascontiguousarray(np.asarray(resize_crop(image.convert("RGB"), (w, h), "center")[0]).transpose(2, 0, 1))


def to_input(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Images as the judge reads them: floats in [0, 1], (N, 3, height, width)."""
    return as_float(torch.from_numpy(np.stack([to_uint8(im, size) for im in images])))


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float) images -> floats in [0, 1]."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def buffer_bytes(n: int, size: tuple[int, int]) -> int:
    """What `load_images` holds for `n` images: one byte per channel and pixel."""
    return n * 3 * size[0] * size[1]


def load_images(paths: list[str], size: tuple[int, int], desc: str, workers: int) -> torch.Tensor:
    """Every image of `paths` into one preallocated (N, 3, height, width) uint8 tensor, decoded
    and cropped by `workers` threads (PIL releases the GIL while it decodes and resizes)."""
    out = torch.empty((len(paths), 3, *size), dtype=torch.uint8)

    def fill(k: int) -> None:
        out[k] = torch.from_numpy(to_uint8(load_rgb(Path(paths[k])), size))

    bar = tqdm(total=len(paths), desc=desc, unit="img", mininterval=2)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(fill, range(len(paths))):
            bar.update(1)
    bar.close()
    return out

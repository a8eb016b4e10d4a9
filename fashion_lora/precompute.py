"""The precompute stage's work: prepare every CSV row (quality checks, enhancement, crop to its
bucket) in worker threads, VAE-encode the good ones in single-bucket batches and write them as
latent shards."""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from .base import vae_scale_factor
from .buckets import Bucket, bucket_name
from .devices import worker_count
from .errors import UserError
from .files import atomic_dir
from .images import area_kept, prepare, to_vae_input
from .latents import ShardWriter, bucket_counts, encode, iter_chunks
from .params import PrecomputeParams, to_dict
from .precision import dtype_of

log = logging.getLogger(__name__)


def _prepare_row(args: tuple[int, str], settings: PrecomputeParams, buckets: list[Bucket]):
    return prepare(args[0], args[1], settings, buckets)


class FlipGap:
    """How far the mirrored latent of an image is from the latent of the mirrored image: the
    error train's latent flips make where the VAE is not mirror-symmetric, as a mean squared
    error relative to the latents' variance (0: the same; 1: as far as unrelated latents' spread),
    overall and per channel."""

    def __init__(self):
        self.sq = self.s1 = self.s2 = None
        self.n = self.count = 0

    def add(self, latents: torch.Tensor, mirrored: torch.Tensor) -> None:
        dims = (0, 2, 3)
        diff, m = (latents.flip(-1) - mirrored).double(), mirrored.double()
        parts = (diff.pow(2).sum(dims), m.sum(dims), m.pow(2).sum(dims))
        self.sq, self.s1, self.s2 = parts if self.sq is None else (self.sq + parts[0], self.s1 + parts[1],
                                                                    self.s2 + parts[2])
        self.n += len(latents)
        self.count += m[:, 0].numel()

    def result(self) -> dict:
        var = self.s2 / self.count - (self.s1 / self.count) ** 2
        per = self.sq / self.count / var
        return {"images": self.n, "relative_mse": round(float(self.sq.sum() / self.count / var.sum()), 6),
                "relative_mse_per_channel": [round(float(v), 6) for v in per]}


def encode_dataset(df: pd.DataFrame, vae, settings: PrecomputeParams, out_dir: Path,
                   buckets: list[Bucket]) -> tuple[dict, Counter, float]:
    """Write `out_dir` (shards + index) atomically from the CSV rows `df`.

    Returns the index, the drop counts by reason and the seconds it took. Worker threads
    decode and resize the next window of rows while the VAE encodes the current one (PIL and
    NumPy release the GIL, and threads cost no start-up or copying between processes); memory
    stays bounded to two windows.
    """
    drops: Counter = Counter()
    gap = FlipGap()
    t0 = time.perf_counter()
    work = functools.partial(_prepare_row, settings=settings, buckets=buckets)
    rows = list(enumerate(df.image_path))
    window = settings.batch_size * 8
    workers = worker_count(settings.workers)
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(rows) > window else None
    try:
        with atomic_dir(out_dir) as tmp, tqdm(total=len(rows), desc="precompute", unit="img",
                                              mininterval=1.0) as bar:
            writer = ShardWriter(tmp, settings.shard_size, dtype_of(settings.dtype))
            for chunk, prepared in _prepared_windows(rows, window, work, pool):
                drops.update(x.reason for x in prepared if x.reason)
                by_bucket: dict[Bucket, list] = {}
                for x in prepared:
                    if x.reason is None:
                        by_bucket.setdefault(x.bucket, []).append(x)
                for bucket in sorted(by_bucket):  # a VAE batch holds one size
                    for batch in iter_chunks(by_bucket[bucket], settings.batch_size):
                        pixels = to_vae_input([x.pixels for x in batch])
                        latents = encode(vae, pixels)
                        mirrored = encode(vae, pixels.flip(-1)) if settings.flipped else [None] * len(batch)
                        if settings.flipped:
                            gap.add(latents, mirrored)
                        for x, latent, flipped in zip(batch, latents, mirrored):
                            r = df.iloc[x.row]
                            writer.add(latent, {"image_name": r.image_name, "caption": r.caption, "split": r.split,
                                                "bucket": list(x.bucket), "crop": list(x.crop),
                                                "orig_size": list(x.orig_size)}, flipped)
                bar.update(len(chunk))
            if not writer.items:
                raise UserError(f"precompute: every one of {len(rows)} rows was dropped ({dict(drops)}); "
                                "check the precompute.min_* thresholds")
            counts = Counter(tuple(it["bucket"]) for it in writer.items if it["split"] == "train")
            top = max(sorted(counts), key=counts.__getitem__) if counts else tuple(writer.items[0]["bucket"])
            meta = {"resolution": settings.resolution, "shape": settings.shape, "bucket_size": settings.bucket_size,
                    "buckets": [list(b) for b in buckets], "train_bucket": list(top),
                    "vae_scale_factor": vae_scale_factor(vae), "dtype": settings.dtype,
                    "scaling_factor": vae.config.scaling_factor, "crop": settings.crop}
            if settings.flipped:  # only then: an index without mirrored latents stays as it was
                meta.update(flipped=True, flip_gap=gap.result())
            index = writer.close(meta)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return index, drops, time.perf_counter() - t0


def _prepared_windows(rows: list, window: int, work, pool):
    """(rows, prepared rows) window by window, in order; with a pool the next window is
    already being prepared while the caller works on the current one."""
    chunks = list(iter_chunks(rows, window))
    if pool is None:
        for chunk in chunks:
            yield chunk, [work(r) for r in chunk]
        return
    def submit(chunk):
        return [pool.submit(work, r) for r in chunk]

    ahead = submit(chunks[0]) if chunks else []
    for i, chunk in enumerate(chunks):
        prepared = [f.result() for f in ahead]
        ahead = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
        yield chunk, prepared


def precompute_report(index: dict, rows: int, drops: Counter, seconds: float, out_dir: Path,
                      device: torch.device, settings: PrecomputeParams) -> dict:
    """What reports/precompute.json records."""
    items = index["items"]
    splits = Counter(it["split"] for it in items)
    kept = [area_kept(tuple(it["crop"]), tuple(it["orig_size"])) for it in items]  # type: ignore[arg-type]
    return {"rows": rows, "encoded": len(items), "train": splits["train"], "val": splits["val"],
            "dropped": dict(drops), "buckets": bucket_counts(items),
            "train_bucket": bucket_name(tuple(index["meta"]["train_bucket"])),  # type: ignore[arg-type]
            "area_kept": {"mean": round(sum(kept) / len(kept), 4), "min": round(min(kept), 4)},
            "shards": len(index["shards"]),
            "shard_bytes": sum((out_dir / s["file"]).stat().st_size for s in index["shards"]),
            "images_per_second": round(rows / seconds, 1), "seconds": round(seconds, 2),
            "device": str(device), "params": to_dict(settings),
            **({"flip_gap": index["meta"]["flip_gap"]} if "flip_gap" in index["meta"] else {})}

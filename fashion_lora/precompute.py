"""The precompute stage's work: prepare every CSV row (quality checks, enhancement, crop) in a
process pool, VAE-encode the good ones in batches and write them as latent shards."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from .base import vae_scale_factor
from .images import prepare, to_vae_input
from .latents import ShardWriter, encode, iter_chunks
from .params import PrecomputeParams, to_dict
from .utils import UserError, atomic_dir, ignore_sigint

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _prepare_row(args: tuple[int, str], pre: PrecomputeParams):
    return prepare(args[0], args[1], pre)


def encode_dataset(df: pd.DataFrame, vae, pre: PrecomputeParams, out_dir: Path) -> tuple[dict, Counter, float]:
    """Write `out_dir` (shards + index) atomically from the CSV rows `df`.

    Returns the index, the drop counts by reason and the seconds it took. Memory stays bounded:
    a window of rows is prepared and encoded at a time, never the whole data set.
    """
    drops: Counter = Counter()
    t0 = time.perf_counter()
    work = functools.partial(_prepare_row, pre=pre)
    rows = list(enumerate(df.image_path))
    window = pre.batch_size * 8
    pool = (multiprocessing.get_context("spawn").Pool(pre.workers, initializer=ignore_sigint)
            if pre.workers > 1 and len(rows) > window else None)
    try:
        with atomic_dir(out_dir) as tmp, tqdm(total=len(rows), desc="precompute", unit="img",
                                              mininterval=1.0) as bar:
            writer = ShardWriter(tmp, pre.shard_size, DTYPES[pre.dtype])
            for chunk in iter_chunks(rows, window):
                prepared = pool.map(work, chunk) if pool else [work(r) for r in chunk]
                good = [x for x in prepared if x.reason is None]
                drops.update(x.reason for x in prepared if x.reason)
                for batch in iter_chunks(good, pre.batch_size):
                    latents = encode(vae, to_vae_input([x.pixels for x in batch]))
                    for x, latent in zip(batch, latents):
                        r = df.iloc[x.row]
                        writer.add(latent, {"image_name": r.image_name, "caption": r.caption, "split": r.split,
                                            "crop": list(x.crop), "orig_size": list(x.orig_size)})
                bar.update(len(chunk))
            if not writer.items:
                raise UserError(f"precompute: every one of {len(rows)} rows was dropped ({dict(drops)}); "
                                "check the precompute.min_* thresholds")
            index = writer.close({"resolution": pre.resolution, "latent_size": pre.resolution // vae_scale_factor(vae),
                                  "dtype": pre.dtype, "scaling_factor": vae.config.scaling_factor,
                                  "crop": pre.crop})
    finally:
        if pool:
            pool.close()
    return index, drops, time.perf_counter() - t0


def precompute_report(index: dict, rows: int, drops: Counter, seconds: float, out_dir: Path,
                      device: torch.device, pre: PrecomputeParams) -> dict:
    """What reports/precompute.json records."""
    splits = Counter(it["split"] for it in index["items"])
    return {"rows": rows, "encoded": len(index["items"]), "train": splits["train"], "val": splits["val"],
            "dropped": dict(drops), "shards": len(index["shards"]),
            "shard_bytes": sum((out_dir / s["file"]).stat().st_size for s in index["shards"]),
            "images_per_second": round(rows / seconds, 1), "seconds": round(seconds, 2),
            "device": str(device), "params": to_dict(pre)}

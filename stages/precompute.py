"""precompute stage: data/fashion_data.csv -> data/latents/ (sharded .pt + index) + reports/precompute.json."""

import functools
import logging
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from fashion_lora.images import prepare
from fashion_lora.latents import ShardWriter, encode, iter_chunks, to_vae_input
from fashion_lora.base import load_base
from fashion_lora.params import load_params, to_dict
from fashion_lora.utils import UserError, atomic_dir, resolve_device, run_stage, set_seed, write_json

log = logging.getLogger("stages.precompute")
CSV = Path("data/fashion_data.csv")
OUT = Path("data/latents")
REPORT = Path("reports/precompute.json")


def _prepare_row(args, p):
    return prepare(args[0], args[1], p)


def main() -> None:
    params = load_params()
    p = params.precompute
    set_seed(params.seed)
    device = resolve_device(p.device, "precompute.device")
    df = pd.read_csv(CSV, keep_default_na=False)
    vae = load_base(Path("models/base"), device).vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    dtype = {"float16": torch.float16, "float32": torch.float32}[p.dtype]
    drops: Counter = Counter()
    t0 = time.perf_counter()
    work = functools.partial(_prepare_row, p=p)
    rows = list(enumerate(df.image_path))
    # Bounded memory: prepare and encode a window of rows at a time (never the whole data set).
    window = p.batch_size * 8
    pool = mp.get_context("spawn").Pool(p.workers) if p.workers > 1 and len(rows) > window else None
    try:
        with atomic_dir(OUT) as tmp, tqdm(total=len(rows), desc="precompute", unit="img",
                                          mininterval=1.0) as bar:
            writer = ShardWriter(tmp, p.shard_size, dtype)
            for chunk in iter_chunks(rows, window):
                prepared = pool.map(work, chunk) if pool else [work(r) for r in chunk]
                good = [x for x in prepared if x.reason is None]
                drops.update(x.reason for x in prepared if x.reason)
                for batch in iter_chunks(good, p.batch_size):
                    latents = encode(vae, to_vae_input([x.pixels for x in batch]))
                    for x, lat in zip(batch, latents):
                        r = df.iloc[x.row]
                        writer.add(lat, {"image_name": r.image_name, "caption": r.caption, "split": r.split,
                                         "crop": list(x.crop), "orig_size": list(x.orig_size)})
                bar.update(len(chunk))
            if not writer.items:
                raise UserError(f"precompute: every one of {len(rows)} rows was dropped ({dict(drops)}); "
                                "check the precompute.min_* thresholds")
            index = writer.close({"resolution": p.resolution, "latent_size": p.resolution // factor,
                                  "dtype": p.dtype, "scaling_factor": vae.config.scaling_factor,
                                  "crop": p.crop})
    finally:
        if pool:
            pool.close()
    seconds = time.perf_counter() - t0
    splits = Counter(it["split"] for it in index["items"])
    report = {"rows": len(rows), "encoded": len(index["items"]), "train": splits["train"], "val": splits["val"],
              "dropped": dict(drops), "shards": len(index["shards"]),
              "shard_bytes": sum((OUT / s["file"]).stat().st_size for s in index["shards"]),
              "images_per_second": round(len(rows) / seconds, 1), "seconds": round(seconds, 2),
              "device": str(device), "params": to_dict(p)}
    write_json(REPORT, report)
    log.info("encoded %d of %d rows into %d shard(s) at %d px; dropped %s; %.1f images/s on %s",
             report["encoded"], len(rows), report["shards"], p.resolution, dict(drops),
             report["images_per_second"], device)


if __name__ == "__main__":
    run_stage(main)

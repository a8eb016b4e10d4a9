"""Filter and precompute throughput: our parallel/batched paths vs naive one-image loops.

    python -m benchmarks.data_throughput [--count 2000] [--reps 3]

Same synthetic images for both; writes reports/bench/data_throughput.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import stats, timed, write
from fashion_lora import embedded
from fashion_lora.base import load_base
from fashion_lora.buckets import buckets_for
from fashion_lora.filtering import filter_entries
from fashion_lora.images import prepare, to_vae_input
from fashion_lora.latents import encode, iter_chunks
from fashion_lora.params import load_params
from fashion_lora.provision import provision_base
from fashion_lora.stage import setup_logging

TINY_STEP = 32  # the tiny base's bucket step (tests/test_buckets.py checks it)


def _prep(path, p):
    return prepare(0, path, p, buckets_for(p, TINY_STEP))


def _upscale(folder: Path) -> None:
    from PIL import Image

    for f in folder.iterdir():
        try:
            with Image.open(f) as im:
                big = im.resize((750, 1101)) if im.width >= 256 else im.copy()
        except OSError:
            continue  # the deliberately broken files stay broken
        big.save(f, format="PNG" if f.suffix == ".png" else "JPEG", quality=92)


def main(argv=None) -> None:
    setup_logging()
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--deepfashion-size", action=argparse.BooleanOptionalAction, default=True,
                    help="upscale the synthetic images to DeepFashion's 750x1101 (decode cost like the real data)")
    args = ap.parse_args(argv)
    params = load_params()
    fp, pp = params.filter, params.precompute
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        embedded.write_dataset(root, args.count, seed=1)
        if args.deepfashion_size:
            _upscale(root / "images")
        captions = json.loads((root / "captions.json").read_text())
        images = root / "images"
        names = sorted(captions)  # the filter decodes every captioned image

        def filter_run(workers: int) -> float:
            out = subprocess.run([sys.executable, "-m", "benchmarks._filter_timing", str(root), str(workers)],
                                 capture_output=True, text=True, check=True).stdout
            return float(out.strip().splitlines()[-1])

        f_naive = stats([filter_run(0) for _ in range(args.reps)])
        f_ours = stats([filter_run(2) for _ in range(args.reps)])

        provision_base("tiny-random", 0, root / "base")
        vae = load_base(root / "base", torch.device("cpu")).vae
        kept, _, _ = filter_entries(captions, images, replace(fp, workers=1))
        paths = [str(images / k["image_name"]) for k in kept][:500]

        def pre_naive():
            for path in paths:
                x = prepare(0, path, pp, buckets_for(pp, TINY_STEP))
                if x.reason is None:
                    encode(vae, to_vae_input([x.pixels]))

        def pre_ours():
            with mp.get_context("spawn").Pool(pp.workers) as pool:
                for chunk in iter_chunks(paths, pp.batch_size * 8):
                    good = [x for x in pool.map(functools.partial(_prep, p=pp), chunk) if x.reason is None]
                    for bucket in sorted({x.bucket for x in good}):  # one size per VAE batch
                        for batch in iter_chunks([x for x in good if x.bucket == bucket], pp.batch_size):
                            encode(vae, to_vae_input([x.pixels for x in batch]))

        p_naive = timed(pre_naive, args.reps)
        p_ours = timed(pre_ours, args.reps)
    n_f, n_p = len(names), len(paths)
    res = {
        "images": {"filter": n_f, "precompute": n_p, "resolution": pp.resolution,
                   "source_size": "750x1101" if args.deepfashion_size else "synthetic native"},
        "filter": {"naive_img_s": n_f / f_naive["median_s"], "ours_img_s": n_f / f_ours["median_s"],
                   "naive": f_naive, "ours": f_ours},
        "precompute": {"naive_img_s": n_p / p_naive["median_s"], "ours_img_s": n_p / p_ours["median_s"],
                       "naive": p_naive, "ours": p_ours},
    }
    for k in ("filter", "precompute"):
        res[k]["speedup"] = res[k]["ours_img_s"] / res[k]["naive_img_s"]
    write("data_throughput", res, [
        ("path", "naive img/s", "ours img/s", "speedup"),
        *((k, f"{res[k]['naive_img_s']:.0f}", f"{res[k]['ours_img_s']:.0f}", f"{res[k]['speedup']:.2f}x")
          for k in ("filter", "precompute")),
    ])


if __name__ == "__main__":
    main()

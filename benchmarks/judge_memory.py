"""The judge's images at real scale: peak memory and time of `judge.load_images` for N photos of
DeepFashion's size (750x1101 JPEGs) at the real-run judge size 192x128, against the float32
list + `torch.cat` it replaced, and what that means for the 9.2k full-body images and all 44k.

    python -m benchmarks.judge_memory [--images 2000] [--workers 2]

Each measurement runs in a fresh process (peak RSS of that process, less the same process's RSS
before loading); writes reports/bench/judge_memory.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write

SIZE = (192, 128)  # the judge size docs/real-runs.md gives for DeepFashion
SCALES = {"full-body subset": 9200, "all images": 44096}

MEASURE = r"""
import json, resource, sys, time
import torch
from fashion_lora.judge import load_images, to_input
from fashion_lora.images import load_rgb
paths, mode, workers = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
size = (192, 128)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "uint8":
    x = load_images(paths, size, "load", workers)
else:  # what judge.load_images did before issue 35: float32 per image, then one torch.cat
    x = torch.cat([to_input([load_rgb(p)], size) for p in paths])
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": (peak - before) / 1024, "tensor_mib": x.nbytes / 2**20}))
"""


def photos(folder: Path, n: int) -> list[str]:
    """`n` JPEGs of 750x1101 (a handful of synthetic figures, each saved under many names)."""
    from fashion_lora import embedded, figures, synthetic

    rng = random.Random(0)
    sources = []
    for _ in range(8):
        img = figures.render(synthetic.random_garments(rng), (750, 1101), "front", rng)
        sources.append(embedded._jpeg_bytes(img))
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(sources[i % len(sources)])
        paths.append(str(path))
    return paths


def measure(paths: list[str], mode: str, workers: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(paths, f)
    out = subprocess.run([sys.executable, "-c", MEASURE, f.name, mode, str(workers)], capture_output=True, text=True,
                         check=True).stdout
    Path(f.name).unlink()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from fashion_lora.judge import buffer_bytes

    with tempfile.TemporaryDirectory() as tmp:
        paths = photos(Path(tmp), args.images)
        runs = {f"uint8 buffer, {args.workers} threads": measure(paths, "uint8", args.workers),
                "uint8 buffer, 1 thread": measure(paths, "uint8", 1),
                "float32 + torch.cat (before)": measure(paths, "float", 1)}
    new = runs[f"uint8 buffer, {args.workers} threads"]
    per_image_s = new["seconds"] / args.images
    at_scale = {name: {"images": n, "buffer_mib": round(buffer_bytes(n, SIZE) / 2**20, 1),
                       "float32_before_mib": round(4 * buffer_bytes(n, SIZE) / 2**20, 1),
                       "minutes_to_load": round(n * per_image_s / 60, 1)} for name, n in SCALES.items()}
    result = {"images": args.images, "size": list(SIZE), "workers": args.workers, "runs": runs,
              "estimate_mib": round(buffer_bytes(args.images, SIZE) / 2**20, 1), "at_scale": at_scale}
    rows = [("run", "seconds", "peak MiB", "tensor MiB")]
    rows += [(k, f"{v['seconds']:.1f}", f"{v['peak_mib']:.0f}", f"{v['tensor_mib']:.0f}") for k, v in runs.items()]
    rows += [(f"{k} ({v['images']})", f"~{v['minutes_to_load']} min", f"{v['buffer_mib']:.0f} (was "
              f"{v['float32_before_mib']:.0f} x2 at the cat)", "") for k, v in at_scale.items()]
    write("judge_memory", result, rows)


if __name__ == "__main__":
    main()

"""A/B of the train stage at the square (512x512) and the portrait bucket (512x768) in one
process, alternating, after a warm-up run, so neither pays the first run's warm-up."""
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import gpu as g
from fashion_lora.params import load_params

bench = g.Bench(float(sys.argv[1]) if len(sys.argv) > 1 else 300, False, Path(os.environ["BENCH_OUT"]) / "bucket_ab.json")
params = load_params()
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    base = g.build_base(root, False)
    square = g.build_latents(root, 64, 512, 16)
    portrait = g.build_latents(root, 64, 512, 16, 96, "portrait")
    p = g.train_params(params, False)
    bench.measure("warmup", 60, g.stage_loop, bench, base, square, g.train_params(params, False, max_steps=30))
    for k in range(2):
        bench.measure(f"stage_b4_512x512_{k}", 60, g.stage_loop, bench, base, square, p)
        bench.measure(f"stage_b4_512x768_{k}", 60, g.stage_loop, bench, base, portrait, p)
bench.save()
print(json.dumps(bench.result["measurements"], indent=1))

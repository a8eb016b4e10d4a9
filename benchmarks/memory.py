"""Peak memory (RSS): filter and precompute at two data set sizes (streaming means it should not
grow with the data), the tiny train stage, and one LoRA step of the real SD1.5 UNet architecture
(random weights) at 64 and 256 px on CPU, with and without gradient checkpointing.

    python -m benchmarks.memory [--sizes 1000 4000] [--skip-sd15]

Each measurement runs in its own process; writes reports/bench/memory.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import write

REPO = Path(__file__).resolve().parents[1]


def peak_mib(cmd: list[str], cwd: Path) -> float:
    """Run `cmd` to completion; peak RSS (MiB) of the largest process it started.

    `ru_maxrss` of RUSAGE_CHILDREN is the maximum over all waited-for descendants, so run each
    measurement from a fresh Python (this function is called in a helper process per command).
    """
    code = ("import resource,subprocess,sys,json;"
            f"r=subprocess.run({cmd!r},cwd={str(cwd)!r},capture_output=True,text=True);"
            "print(json.dumps([r.returncode,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,r.stderr[-2000:]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rc, kib, err = json.loads(out.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"{cmd} failed: {err}")
    return round(kib / 1024, 1)


def stage_repo(root: Path, count: int, train_steps: int) -> Path:
    """A minimal working copy with stages, package and params for `count` synthetic images."""
    for d in ("stages", "fashion_lora"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["synthetic"]["count"] = count
    # Peak memory depends on the architecture and batch, not on the weights or the step count:
    # skip the base's minutes of pretraining and most of the steps.
    raw["model"]["base"] = "tiny-random"
    raw["train"]["max_steps"] = train_steps
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


SD15_STEP = """
import sys, torch
from fashion_lora import diffusion
from fashion_lora.sd15 import build_sd15_unet
from fashion_lora.tiny import SD_SCHEDULE
from fashion_lora.lora import attach_lora
from fashion_lora.params import load_params
from diffusers import DDPMScheduler
res, ckpt = int(sys.argv[1]), sys.argv[2] == "1"
unet = build_sd15_unet(0)
attach_lora(unet, load_params().train.lora)
if ckpt:
    unet.enable_gradient_checkpointing()
unet.train()
sched = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k not in ("steps_offset", "set_alpha_to_one")})
lat = torch.randn(1, 4, res // 8, res // 8)
loss = diffusion.training_loss(unet, sched, lat, torch.randn_like(lat), torch.tensor([500]),
                               torch.randn(1, 77, 768), None)
loss.backward()
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 4000])
    ap.add_argument("--skip-sd15", action="store_true")
    ap.add_argument("--train-steps", type=int, default=100, help="steps of the measured train stage")
    args = ap.parse_args(argv)
    py = sys.executable
    res: dict = {"data": {}}
    rows = [("measurement", "peak RSS MiB")]
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            repo = stage_repo(Path(tmp) / f"n{n}", n, args.train_steps)
            subprocess.run([py, "-m", "stages.download"], cwd=repo, check=True, capture_output=True)
            subprocess.run([py, "-m", "stages.base_model"], cwd=repo, check=True, capture_output=True)
            f = peak_mib([py, "-m", "stages.filter"], repo)
            p = peak_mib([py, "-m", "stages.precompute"], repo)
            res["data"][str(n)] = {"filter_mib": f, "precompute_mib": p}
            rows += [(f"filter, {n} images", f), (f"precompute, {n} images", p)]
            if n == args.sizes[0]:
                t = peak_mib([py, "-m", "stages.train"], repo)
                res["train_tiny_mib"] = t
                rows.append(("train stage, tiny model", t))
        if not args.skip_sd15:
            script = Path(tmp) / "sd15_step.py"
            script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + SD15_STEP)
            res["sd15_lora_step"] = {}
            for r in (64, 256):
                for ck in (0, 1):
                    m = peak_mib([py, str(script), str(r), str(ck)], REPO)
                    res["sd15_lora_step"][f"{r}px_checkpointing_{bool(ck)}"] = m
                    rows.append((f"SD1.5 UNet LoRA step {r}px, grad ckpt {bool(ck)}", m))
    write("memory", res, rows)


if __name__ == "__main__":
    main()

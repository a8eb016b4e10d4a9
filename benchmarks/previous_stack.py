"""The adapter and the folders in the previous major stack (diffusers 0.32 / transformers 4.54), after
a `dvc repro`: build a small second venv of that stack (`.previous-stack/`, git-ignored, not part of
the main install), load there models/base alone, with models/lora's diffusers file, with its kohya
file, and a fused export, draw generate's prompts with the same seed as the pinned stack does in
this process, and compare the pixels.

Two controls write the adapter as this project wrote it before (text-encoder keys in transformers
5's flat layout, alpha only in the metadata): the pinned stack loads them; the previous one stops
on the first and scales the UNet's LoRA by rank/alpha on the second.

    python -m benchmarks.previous_stack [--env .previous-stack] [--steps N] [--python PATH]

Reads models/base, models/lora, data/latents/index.json and params.yaml; writes
reports/bench/previous_stack.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write
from benchmarks.previous_stack_child import draw, load
from fashion_lora import paths
from fashion_lora.export import export_fused
from fashion_lora.inference import image_size
from fashion_lora.lora import ADAPTER_KEY, KOHYA_WEIGHTS, LORA_WEIGHTS
from fashion_lora.params import load_params

log = logging.getLogger("benchmarks.previous_stack")

# The stack the issue names (diffusers 0.32.1 / transformers 4.54.1), with the peft of its time and
# the torch the main install pins (the CPU wheel on disk).
PINS = ("torch==2.13.0", "diffusers==0.32.1", "transformers==4.54.1", "peft==0.14.0", "tokenizers==0.21.4",
        "huggingface-hub==0.36.2", "safetensors==0.8.0", "numpy<3")
CHILD = Path(__file__).with_name("previous_stack_child.py")


def ensure_env(env: Path) -> Path:
    """The previous stack's python, installing it into `env` the first time (or when PINS change)."""
    python, marker = env / "bin" / "python", env / "pins.txt"
    if python.is_file() and marker.is_file() and marker.read_text() == "\n".join(PINS):
        return python
    log.info("building the previous stack in %s (%s): a few minutes the first time", env, ", ".join(PINS[:4]))
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    marker.write_text("\n".join(PINS))
    return python


def old_layout(file: Path, out: Path, classic_keys: bool) -> None:
    """`file` as this project wrote adapters before: lora_B without the folded alpha / rank and the
    trained alpha in the peft metadata; the text encoder's keys flat unless `classic_keys`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(file), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    trained = json.loads(meta[ADAPTER_KEY])
    peft_meta = json.loads(meta["lora_adapter_metadata"])
    state = {}
    for key, value in tensors.items():
        component = key.split(".", 1)[0]
        scale = trained[component]["alpha"] / trained[component]["rank"]
        if ".lora_B." in key:
            value = value / scale
        if not classic_keys:
            key = key.replace("text_encoder.text_model.", "text_encoder.")
        state[key] = value
    for component, spec in trained.items():
        peft_meta[f"{component}.lora_alpha"] = spec["alpha"]
    save_file(state, str(out), metadata={**meta, "lora_adapter_metadata": json.dumps(peft_meta)})


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    """Pixel differences on the 0-255 scale."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)) * 255
    return {"mean": round(float(d.mean()), 4), "max": round(float(d.max()), 4)}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    params = load_params()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", type=Path, default=Path(".previous-stack"), help="the second venv (built if missing)")
    ap.add_argument("--steps", type=int, default=params.generate.steps[0], help="denoising steps per image")
    ap.add_argument("--python", type=Path, default=None,
                    help="run the previous side with this interpreter instead of --env's (the tests' wiring check)")
    args = ap.parse_args()
    threads = params.cpu_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    python = args.python or ensure_env(args.env.resolve())
    height, width = image_size(params.generate.height, params.generate.width, paths.LATENTS)
    lora_dir = paths.LORA.resolve()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        export_fused(paths.BASE, paths.LORA, work / "fused")
        old_layout(lora_dir / LORA_WEIGHTS, work / "flat_keys.safetensors", classic_keys=False)
        old_layout(lora_dir / LORA_WEIGHTS, work / "alpha_in_metadata.safetensors", classic_keys=True)
        base = str(paths.BASE.resolve())
        cases = {"base": {"base": base}, "fused": {"base": str(work / "fused")},
                 "lora": {"base": base, "lora_dir": str(lora_dir), "lora": LORA_WEIGHTS},
                 "kohya": {"base": base, "lora_dir": str(lora_dir), "lora": KOHYA_WEIGHTS},
                 "control_flat_keys": {"base": base, "lora_dir": str(work), "lora": "flat_keys.safetensors"},
                 "control_alpha_in_metadata": {"base": base, "lora_dir": str(work),
                                               "lora": "alpha_in_metadata.safetensors"}}
        spec = {"prompts": list(params.generate.prompts), "steps": args.steps, "seed": params.generate.seed,
                "guidance_scale": params.generate.guidance_scale, "height": height, "width": width,
                "threads": threads, "cases": cases}
        (work / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run([str(python), str(CHILD), str(work / "spec.json"), str(work / "previous.npz")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the previous stack's child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        previous = dict(np.load(work / "previous.npz"))
        # the same stock code as the child's, here in the pinned stack
        pinned = {name: draw(load(case), spec) for name, case in cases.items()}
    import diffusers
    import transformers

    result = {"stacks": {"pinned": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                                    "torch": torch.__version__},
                         "previous": child["versions"]},
              "images": {"prompts": len(spec["prompts"]), "steps": spec["steps"], "size": [height, width],
                         "seed": spec["seed"]},
              # How far the LoRA moves the pinned stack's images: the scale the differences below are read on.
              "lora_effect": diff(pinned["lora"], pinned["base"]),
              "cases": {}}
    for name in cases:
        if name in child["errors"]:
            result["cases"][name] = {"loads": False, "error": child["errors"][name]}
        else:
            result["cases"][name] = {"loads": True, "vs_pinned": diff(previous[name], pinned[name])}
        if name.startswith("control"):  # the same adapter: the pinned stack, which reads both layouts, draws the same
            result["cases"][name]["pinned_vs_lora"] = diff(pinned[name], pinned["lora"])
    rows = [(name, json.dumps(c.get("vs_pinned") or c["error"][:80])) for name, c in result["cases"].items()]
    write("previous_stack", result, [("lora effect (pinned, vs base)", json.dumps(result["lora_effect"]))] + rows)


if __name__ == "__main__":
    main()

"""Run by benchmarks/previous_stack.py inside the previous stack's venv (diffusers 0.32 /
transformers 4.x): load each case of the spec with the stock API only, draw its prompts and
seeds, save the images. Imports nothing of fashion_lora, which is written for the pinned stack;
benchmarks/previous_stack.py draws the pinned stack's images with these same functions.

    python benchmarks/previous_stack_child.py SPEC.json OUT.npz
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def load(case: dict):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(case["base"], torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False, use_safetensors=True)
    if case.get("lora"):
        pipe.load_lora_weights(case["lora_dir"], weight_name=case["lora"], adapter_name="fashion")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, spec: dict) -> np.ndarray:
    images = []
    for prompt in spec["prompts"]:
        out = pipe(prompt, num_inference_steps=spec["steps"], guidance_scale=spec["guidance_scale"],
                   height=spec["height"], width=spec["width"], output_type="np",
                   generator=torch.Generator().manual_seed(spec["seed"]))
        images.append(out.images[0])
    return np.stack(images)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    torch.set_num_threads(spec["threads"])
    import diffusers
    import peft
    import transformers

    arrays, errors = {}, {}
    for name, case in spec["cases"].items():
        try:
            arrays[name] = draw(load(case), spec)
        except Exception as e:  # a case that cannot load is the finding, not a crash of the whole check
            errors[name] = f"{type(e).__name__}: {e}"[:500]
    np.savez(sys.argv[2], **arrays)
    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "torch": torch.__version__}
    print(json.dumps({"errors": errors, "versions": versions}))


if __name__ == "__main__":
    main()

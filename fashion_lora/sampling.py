"""Text-to-image sampling: seeded images, the LoRA switched on or off, file-name slugs."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from . import diffusion
from .params import GenerateParams


@contextlib.contextmanager
def lora_enabled(pipe, enabled: bool, fuse: bool = False) -> Iterator[None]:
    """Run the block with the pipeline's LoRA on or off (same weights, same seeds).

    `fuse` merges the LoRA into the weights of the UNet (and of the text encoder when it has
    one) for the block (no extra matmuls per layer); leaving the block subtracts it again, which
    restores the base only up to rounding, so callers draw their base images first.
    """
    from .lora import lora_components

    components = lora_components(pipe)
    reset_cuda_graphs(pipe.unet)  # graphs recorded the other LoRA state's kernels
    if enabled:
        pipe.enable_lora()
        if fuse:
            pipe.fuse_lora(components=components, lora_scale=1.0)
    else:
        pipe.disable_lora()
    try:
        yield
    finally:
        if enabled and fuse:
            pipe.unfuse_lora(components=components)
        pipe.enable_lora()
        reset_cuda_graphs(pipe.unet)


def use_cuda_graphs(unet) -> None:
    """Replay the UNet's forward as a CUDA graph, one per input shape (inference only).

    Sampling calls the UNet with the same shapes 20-50 times per image, and on the GPUs
    measured here a 512 px step is bound by launching its hundreds of kernels, not by the
    arithmetic: one graph launch replaces them. The graph replays the kernels recorded at
    capture, so anything that changes which kernels run (LoRA on/off) must call
    `reset_cuda_graphs`; weights changed in place (fusing) are read at replay.
    """
    import torch

    eager = unet.forward
    unet._cuda_graphs = {}

    def forward(sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kw):
        if args or any(v is not None for v in kw.values()) or sample.device.type != "cuda" or unet.training:
            return eager(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kw)
        t = torch.as_tensor(timestep, device=sample.device)
        key = (tuple(sample.shape), sample.dtype, tuple(t.shape), t.dtype, tuple(encoder_hidden_states.shape))
        if key not in unet._cuda_graphs:
            unet._cuda_graphs[key] = _capture(eager, sample, t, encoder_hidden_states)
        graph, inputs, out = unet._cuda_graphs[key]
        for static, value in zip(inputs, (sample, t, encoder_hidden_states)):
            static.copy_(value)
        graph.replay()
        result = out.clone()  # the next replay overwrites `out`
        if not return_dict:
            return (result,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=result)

    unet.forward = forward


def _capture(eager, sample, t, encoder_hidden_states):
    import torch

    inputs = (sample.clone(), t.clone(), encoder_hidden_states.clone())
    side = torch.cuda.Stream()  # warm-up off the capture stream (cuBLAS/cuDNN set-up must not be recorded)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            eager(*inputs, return_dict=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = eager(*inputs, return_dict=False)[0]
    return graph, inputs, out


def reset_cuda_graphs(unet) -> None:
    """Forget recorded graphs (they are captured again on the next call)."""
    if getattr(unet, "_cuda_graphs", None):
        unet._cuda_graphs.clear()


def sample_image(pipe, prompt: str, negative_prompt: str, steps: int, guidance_scale: float, seed: int,
                 height: int, width: int, max_token_length: int = 77) -> Image.Image:
    """One image; the noise comes from a CPU generator so a seed means the same image anywhere."""
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        out = pipe(**diffusion.prompt_inputs(pipe, prompt, negative_prompt, max_token_length), num_inference_steps=steps,
                   guidance_scale=guidance_scale, height=height, width=width, generator=generator)
    return out.images[0]


def slug(text: str, n: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n].rstrip("-") or "prompt"


def sample_prompt_grid(pipe, settings: GenerateParams, size: tuple[int, int], out_dir: Path,
                       max_token_length: int = 77) -> tuple[dict, dict[int, list[float]]]:
    """Every prompt x step count, base and LoRA with the same seed (`settings.seed` + prompt number),
    at `size` (height, width), saved as PNGs in `out_dir`. All base images come first (the LoRA
    is then fused in once when `settings.fuse_lora`). Returns the images by (prompt number, steps,
    model) and the seconds each image took, by step count."""
    from tqdm import tqdm

    seconds: dict[int, list[float]] = {s: [] for s in settings.steps}
    images = {}
    bar = tqdm(total=2 * len(settings.prompts) * len(settings.steps), desc="generate", unit="img")
    for model in ("base", "lora"):
        with lora_enabled(pipe, model == "lora", fuse=settings.fuse_lora):
            for i, prompt in enumerate(settings.prompts):
                for steps in settings.steps:
                    t0 = time.perf_counter()
                    image = sample_image(pipe, prompt, settings.negative_prompt, steps, settings.guidance_scale,
                                         settings.seed + i, *size, max_token_length)
                    seconds[steps].append(time.perf_counter() - t0)
                    image.save(out_dir / f"{i:02d}_{slug(prompt)}_{steps}steps_{model}.png")
                    images[i, steps, model] = image
                    bar.update(1)
    bar.close()
    return images, seconds

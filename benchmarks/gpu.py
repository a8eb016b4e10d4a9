"""The real job's speed on one GPU: the SD1.5 architecture (random weights) at 512 px.

    python -m benchmarks.gpu [--budget-s 420] [--smoke]

Measures, in order of importance, each only while the time budget lasts:
- the train stage's own loop (`training.train`) against the bare loop (UNet forward + backward
  + AdamW on one resident batch, the same LoRA, precision and optimizer) at batch 4 and at a
  large batch: steps/s, images/s, MFU from a FLOP count, peak memory; with and without each
  speed option (torch.compile, fused AdamW, bf16 vs fp16, gradient checkpointing);
- generate at 512 px, 20 steps, guidance 7.5: fp32 with the LoRA unfused (the old path) vs the
  stage's path (fp16, LoRA fused);
- precompute at 512 px (750x1101 JPEGs, as DeepFashion's): images/s, workers `auto`, fp16 VAE.

Writes reports/bench/gpu.json after every measurement (a run cut short keeps what it measured).
`--smoke` runs every path on the CPU with the tiny model and tiny sizes (the test suite does, so
the script cannot rot); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
import torch._dynamo

from benchmarks.common import OUT, machine
from fashion_lora import diffusion
from fashion_lora.params import load_params

log = logging.getLogger("benchmarks.gpu")

# Dense bf16/fp16 tensor-core peaks from the datasheets (FLOP/s), for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
              "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "RTX 4090": 165e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class Bench:
    """Results, the clock and the JSON file, written after every measurement."""

    def __init__(self, budget_s: float, smoke: bool, out: Path):
        self.t0, self.budget, self.smoke, self.out = time.perf_counter(), budget_s, smoke, out
        self.result: dict = {"machine": machine(), "smoke": smoke, "budget_s": budget_s, "measurements": {}}
        out.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def measure(self, name: str, need_s: float, fn, *args, **kw) -> dict | None:
        """Run `fn` when at least `need_s` seconds of the budget are left; record result or error."""
        if not self.smoke and self.left() < need_s:
            self.result["measurements"][name] = {"skipped": f"budget ({self.left():.0f} s left, needs ~{need_s:.0f})"}
            log.warning("%s: skipped (budget)", name)
            return None
        t = time.perf_counter()
        try:
            r = fn(*args, **kw)
        except Exception as e:  # one failing option must not lose the others' figures
            r = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
            log.error("%s failed: %s", name, e)
        r["wall_s"] = round(time.perf_counter() - t, 1)
        self.result["measurements"][name] = r
        log.info("%s: %s", name, {k: v for k, v in r.items() if k != "trace"})
        self.save()
        torch._dynamo.reset()  # drop compiled graphs (and their CUDA graph pools) of the last model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return r

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=2) + "\n")


# ----------------------------------------------------------------------------- setup
def build_base(root: Path, smoke: bool) -> Path:
    from fashion_lora.folders import save_pipeline
    from fashion_lora.provision import provision_base
    from fashion_lora.sd15 import build_sd15_random

    out = root / "base"
    if smoke:
        provision_base("tiny-random", 0, out)
    else:
        with torch.device("cuda"):  # random init of 1B parameters: seconds on the GPU, a minute on CPU
            pipe = build_sd15_random(0, root)
        save_pipeline(pipe, out)
    return out


def build_latents(root: Path, latent_side: int, n_train: int, n_val: int, latent_height: int | None = None,
                  name: str = "latents") -> Path:
    """Random latents with real fashion captions, in the precompute stage's format; one bucket of
    `latent_side` wide x `latent_height` (default: square) high."""
    import random

    from fashion_lora.latents import ShardWriter
    from fashion_lora.synthetic import caption_for, random_garments

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    out = root / name
    h = latent_height or latent_side
    w = ShardWriter(out, 1024, torch.float16)
    for i in range(n_train + n_val):
        w.add(torch.randn(4, h, latent_side, generator=gen),
              {"image_name": f"{i}.jpg", "caption": caption_for(random_garments(rng)),
               "split": "train" if i < n_train else "val", "bucket": [latent_side * 8, h * 8],
               "crop": [0, 0, 1, 1], "orig_size": [1, 1]})
    w.close({"resolution": latent_side * 8, "dtype": "float16", "scaling_factor": 0.18215, "crop": "center",
             "train_bucket": [latent_side * 8, h * 8]})
    return out


# ----------------------------------------------------------------------------- training
def train_params(params, smoke: bool, **overrides):
    t = params.train
    # 150 steps at batch 4: its first ~25 steps run slower (allocator and lazy-kernel warm-up,
    # measured), which a 60-step run would count against the stage.
    base = dict(device="auto", max_token_length=77, max_steps=6 if smoke else 150, val_every=10**6, checkpoint_every=10**6,
                val_repeats=1, batch_size=2 if smoke else 4, learning_rate=1e-4, samples=replace(t.samples, every=0),
                early_stopping=replace(t.early_stopping, patience=10**6))
    base.update(overrides)
    return replace(params, train=replace(t, **base))


def stage_loop(bench: Bench, base_dir: Path, latent_dir: Path, params) -> dict:
    """The train stage's own loop (`training.train`), as the stage runs it; steady steps/s from its report."""
    from fashion_lora.buckets import bucket_name
    from fashion_lora.devices import raise_recompile_limit
    from fashion_lora.latents import read_index
    from fashion_lora.training import Outputs, train

    raise_recompile_limit()  # what the train stage's configure_torch does for train.compile
    work = Path(tempfile.mkdtemp(dir=base_dir.parent))
    try:
        out = Outputs(lora_dir=work / "lora", live_dir=work / "live", checkpoint_dir=work / "ck")
        report = train(params, base_dir, latent_dir, out)
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)  # the next run may use other settings
        lora = work / "lora"
        if lora.exists() and not (base_dir.parent / "lora").exists():
            shutil.copytree(lora, base_dir.parent / "lora")  # generate's benchmark loads it
        shutil.rmtree(work, ignore_errors=True)
    sps = report["steps_per_second"]
    return {"steps_per_second": sps, "images_per_second": round(sps * params.train.batch_size, 2),
            "first_step_seconds": report["first_step_seconds"], "peak_memory_mib": report["peak_memory_mib"],
            "mixed_precision": report["system"]["mixed_precision"], "batch_size": params.train.batch_size,
            "steps": report["steps"], "size": bucket_name(read_index(latent_dir)["meta"]["train_bucket"])}


def bare_setup(base_dir: Path, params, batch: int, precision: str, device: torch.device):
    """UNet with our LoRA (fp32) on a half-precision base, one resident batch, AdamW."""
    from fashion_lora.base import load_base
    from fashion_lora.lora import attach_lora, keep_lora_fp32
    from fashion_lora.precision import dtype_of

    dtype = dtype_of(precision)
    base = load_base(base_dir, device, dtype, with_vae=False)
    unet = base.unet
    torch.manual_seed(0)
    attach_lora(unet, params.train.lora)
    keep_lora_fp32(unet)
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    side = unet.config.sample_size
    lat = torch.randn(batch, 4, side, side, device=device, dtype=dtype)
    hidden = torch.randn(batch, 77, base.text_encoder.config.hidden_size, device=device, dtype=dtype)
    noise, t = torch.randn_like(lat), torch.randint(0, 1000, (batch,), device=device)
    return base, unet, (lat, noise, t, hidden)


def bare_loop(bench: Bench, base_dir: Path, params, batch: int, precision: str = "fp16", fused: bool = True,
              compile_mode: str = "none", cuda_graphs: bool = False, checkpointing: bool = False,
              steps: int = 30) -> dict:
    """Seconds per step of UNet forward + backward + AdamW on one resident batch: the limit the
    stage's loop is compared with (same LoRA, precision, optimizer and compile)."""
    from fashion_lora.devices import raise_recompile_limit
    from fashion_lora.training.setup import compile_unet

    raise_recompile_limit()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        precision = "no"
    base, unet, (lat, noise, t, hidden) = bare_setup(base_dir, params, batch, precision, device)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    lora = [q for q in unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(lora, lr=1e-4, fused=fused if device.type == "cuda" else None,
                            foreach=None if fused or device.type != "cuda" else True)
    model = compile_unet(unet, compile_mode, cuda_graphs)
    model.train()
    amp = torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                         enabled=precision != "no")
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")

    def step():
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with amp:
            loss = diffusion.training_loss(model, base.noise_scheduler, lat, noise, t, hidden, None)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    t_first = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t_first
    for _ in range(2):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = 2 if bench.smoke else steps
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    sps = steps / (time.perf_counter() - t0)
    return {"steps_per_second": round(sps, 3), "images_per_second": round(sps * batch, 2),
            "first_step_seconds": round(first, 2), "batch_size": batch, "precision": precision,
            "fused_adamw": fused, "compile": compile_mode, "cuda_graphs": cuda_graphs,
            "gradient_checkpointing": checkpointing,
            "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None}


def flops_per_step(bench: Bench, base_dir: Path, params, batch: int) -> dict:
    """FLOPs of one forward + backward of the UNet with our LoRA (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "fp16" if device.type == "cuda" else "no"
    base, unet, (lat, noise, t, hidden) = bare_setup(base_dir, params, batch, precision, device)
    unet.train()
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.float16, enabled=precision != "no"):
            loss = diffusion.training_loss(unet, base.noise_scheduler, lat, noise, t, hidden, None)
        loss.backward()
    return {"batch_size": batch, "flops": counter.get_total_flops()}


def add_mfu(bench: Bench, flops: float | None, batch: int) -> None:
    """MFU of every training measurement: FLOPs per image x images/s over the card's peak."""
    peak = peak_flops(bench.result["machine"].get("gpu") or "")
    bench.result["peak_flops"] = peak
    if not (peak and flops):
        return
    # Model FLOPs grow linearly with the batch; recomputation (checkpointing) is not counted (MFU, not HFU).
    for r in bench.result["measurements"].values():
        if "images_per_second" in r and "batch_size" in r:
            r["mfu"] = round(flops / batch * r["images_per_second"] / peak, 4)
    bench.save()


# ----------------------------------------------------------------------------- generate
def generate_speed(bench: Bench, base_dir: Path, lora_dir: Path, precision: str, fuse: bool, size: int,
                   steps: int, cuda_graphs: bool = False, images: int = 3, height: int | None = None) -> dict:
    """Seconds per image of the generate stage's sampling at `size` px wide, `height` (default
    `size`) high (after one warm-up image).
    With CUDA graphs, also how far the same seed's image is from the eager one (0-255 scale)."""
    import numpy as np

    from fashion_lora.lora import load_pipeline
    from fashion_lora.precision import inference_dtype
    from fashion_lora.sampling import lora_enabled, sample_image, use_cuda_graphs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = inference_dtype(precision, device, "precision")
    pipe = load_pipeline(base_dir, lora_dir, device, dtype)
    prompt = "The lady wears a short-sleeve red shirt with solid color patterns. She wears long blue trousers."
    height = height or size
    out = {"dtype": str(dtype), "fuse_lora": fuse, "cuda_graphs": cuda_graphs, "size": f"{size}x{height}",
           "steps": steps}
    with lora_enabled(pipe, True, fuse=fuse):
        eager = sample_image(pipe, prompt, "", steps, 7.5, 0, height, size)
        if cuda_graphs and device.type == "cuda":
            use_cuda_graphs(pipe.unet)
            graphed = sample_image(pipe, prompt, "", steps, 7.5, 0, height, size)
            diff = np.abs(np.asarray(eager, dtype=np.int16) - np.asarray(graphed, dtype=np.int16))
            out.update(max_abs_diff_vs_eager=int(diff.max()), mean_abs_diff_vs_eager=round(float(diff.mean()), 4))
        sync(device)
        t0 = time.perf_counter()
        for i in range(images):
            sample_image(pipe, prompt, "", steps, 7.5, i + 1, height, size)
        sync(device)
    return {"seconds_per_image": round((time.perf_counter() - t0) / images, 4), **out}


# ----------------------------------------------------------------------------- precompute
def precompute_speed(bench: Bench, root: Path, base_dir: Path, params, resolution: int, n_images: int,
                     rows: int, workers, precision: str, batch: int) -> dict:
    """images/s of the precompute stage's `encode_dataset` on JPEGs of DeepFashion's size."""
    import pandas as pd
    from PIL import Image

    from fashion_lora.base import load_base, model_step
    from fashion_lora.buckets import bucket_name, buckets_for
    from fashion_lora.devices import worker_count
    from fashion_lora.precision import inference_dtype
    from fashion_lora.precompute import encode_dataset

    images = root / "jpeg"
    if not images.exists():
        from fashion_lora import embedded

        embedded.write_dataset(root / "synth", n_images, seed=5)
        images.mkdir()
        size = (750, 1101) if not bench.smoke else (96, 141)
        for i, f in enumerate(sorted((root / "synth" / "images").glob("*.jpg"))):
            try:  # the synthetic set holds a few broken files on purpose
                Image.open(f).convert("RGB").resize(size, Image.BICUBIC).save(images / f"{i}.jpg", quality=90)
            except OSError:
                continue
    files = sorted(images.glob("*.jpg"))
    df = pd.DataFrame({"image_path": [str(files[i % len(files)]) for i in range(rows)],
                       "image_name": [files[i % len(files)].name for i in range(rows)],
                       "caption": ["a caption"] * rows, "split": ["train"] * rows})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = replace(params.precompute, resolution=resolution, workers=workers, precision=precision, batch_size=batch,
                  min_side=16, min_sharpness=0.0, shape="buckets", bucket_size="short_side")
    base = load_base(base_dir, device, inference_dtype(precision, device, "precision"))
    buckets = buckets_for(settings, model_step(base.vae, base.unet))  # 750x1101 -> 512x768 at 512 on SD1.5
    index, drops, seconds = encode_dataset(df, base.vae, settings, root / "bench-latents", buckets)
    shutil.rmtree(root / "bench-latents", ignore_errors=True)
    return {"images_per_second": round(rows / seconds, 1), "rows": rows, "encoded": len(index["items"]),
            "workers": worker_count(workers), "precision": precision, "batch_size": batch, "resolution": resolution,
            "buckets": sorted({bucket_name(it["bucket"]) for it in index["items"]})}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    from fashion_lora.stage import setup_logging

    setup_logging()
    logging.getLogger("fashion_lora").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=420, help="stop starting measurements after this")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, tiny sizes: checks the script runs")
    ap.add_argument("--large-batch", type=int, default=32)
    ap.add_argument("--only", nargs="*", help="measure only these (names as in the JSON)")
    args = ap.parse_args(argv)
    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA GPU (or --smoke)")
    bench = Bench(args.budget_s, smoke, OUT / "gpu.json")
    params = load_params()
    b4, big = (2, 3) if smoke else (4, args.large_batch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        base_dir = build_base(root, smoke)
        side = 8 if smoke else 64
        latent_dir = build_latents(root, side, 16 if smoke else 512, 4 if smoke else 16)
        # the portrait bucket DeepFashion's 750x1101 photos get at 512 (512x768; 8x12 latents in smoke)
        portrait_dir = build_latents(root, side, 16 if smoke else 512, 4 if smoke else 16, side * 3 // 2, "portrait")
        bench.result["setup_s"] = round(time.perf_counter() - t, 1)
        p4 = train_params(params, smoke)
        lora_dir = root / "lora"  # written by the first stage run
        gsize, gsteps = (64, 2) if smoke else (512, 20)
        n_img, rows = (8, 24) if smoke else (200, 2000)
        gpu = not smoke  # compile needs a GPU to be worth measuring (and minutes of CPU to build)
        plan = [  # (name, seconds it needs, function, args, kwargs), most important first
            (f"stage_b{b4}", 60, stage_loop, (bench, base_dir, latent_dir, p4), {}),
            (f"stage_b{b4}_portrait_bucket", 60, stage_loop, (bench, base_dir, portrait_dir, p4), {}),
            (f"bare_b{b4}", 30, bare_loop, (bench, base_dir, params, b4), {}),
            (f"flops_b{b4}", 20, flops_per_step, (bench, base_dir, params, b4), {}),
            ("generate_fp32_unfused", 40, generate_speed, (bench, base_dir, lora_dir, "fp32", False, gsize, gsteps), {}),
            ("generate_fp16_fused", 30, generate_speed, (bench, base_dir, lora_dir, "auto", True, gsize, gsteps), {}),
            ("generate_fp16_fused_cudagraphs", 30, generate_speed,
             (bench, base_dir, lora_dir, "auto", True, gsize, gsteps), {"cuda_graphs": gpu}),
            ("generate_fp16_fused_cudagraphs_portrait", 30, generate_speed,
             (bench, base_dir, lora_dir, "auto", True, gsize, gsteps), {"cuda_graphs": gpu, "height": gsize * 3 // 2}),
            ("precompute_auto", 60, precompute_speed,
             (bench, root, base_dir, params, 64 if smoke else 512, n_img, rows, "auto", "auto", 8 if smoke else 32), {}),
            (f"stage_b{big}", 60, stage_loop,
             (bench, base_dir, latent_dir, train_params(params, smoke, batch_size=big, max_steps=6 if smoke else 60)), {}),
            (f"bare_b{big}", 30, bare_loop, (bench, base_dir, params, big), {}),
            (f"bare_b{big}_grad_checkpointing", 30, bare_loop, (bench, base_dir, params, big), {"checkpointing": True}),
            (f"stage_b{b4}_sync_every_1", 40, stage_loop,
             (bench, base_dir, latent_dir, train_params(params, smoke, sync_every=1)), {}),
            (f"stage_b{b4}_data_on_host", 40, stage_loop,
             (bench, base_dir, latent_dir, train_params(params, smoke, data_on_device=False)), {}),
            (f"bare_b{b4}_foreach_adamw", 20, bare_loop, (bench, base_dir, params, b4), {"fused": False}),
            (f"bare_b{b4}_bf16", 20, bare_loop, (bench, base_dir, params, b4), {"precision": "bf16"}),
        ]
        if gpu:
            plan += [
                ("bare_b4_compile_regional", 200, bare_loop, (bench, base_dir, params, 4), {"compile_mode": "regional"}),
                ("bare_b4_compile_full_cudagraphs", 200, bare_loop, (bench, base_dir, params, 4),
                 {"compile_mode": "full", "cuda_graphs": True}),
                ("stage_b4_compile_regional", 240, stage_loop,
                 (bench, base_dir, latent_dir, train_params(params, smoke, compile="regional")), {}),
            ]
        flops = None
        for name, need, fn, fargs, kw in plan:
            if args.only and name not in args.only:
                continue
            r = bench.measure(name, need, fn, *fargs, **kw)
            if name.startswith("flops"):
                flops = (r or {}).get("flops")
        add_mfu(bench, flops, b4)
    bench.save()
    rows = [(k, v.get("steps_per_second", v.get("seconds_per_image", v.get("images_per_second", v.get("skipped",
             v.get("error", ""))))), v.get("images_per_second", ""), v.get("mfu", ""), v.get("peak_memory_mib", ""))
            for k, v in bench.result["measurements"].items()]
    for r in rows:
        print("  ".join(str(x) for x in r))
    print(f"-> {bench.out}")


if __name__ == "__main__":
    main()

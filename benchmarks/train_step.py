"""Train-step throughput: our loop (precomputed latents) vs the common approach (VAE encode and
tokenize every step, as the widely used diffusers LoRA example does), and our full step time
over the limit (UNet forward + backward + optimizer step alone on a resident batch).

    python -m benchmarks.train_step [--steps 40] [--reps 3] [--resolutions 64 128]

Same tiny model, batch, resolution and device for all; writes reports/bench/train_step.json.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import seconds_per_call, write
from fashion_lora import diffusion, embedded
from fashion_lora.base import load_base
from fashion_lora.filtering import filter_entries, sample_and_split
from fashion_lora.images import prepare, to_vae_input
from fashion_lora.latents import ShardWriter, encode, load_latents
from fashion_lora.lora import attach_lora
from fashion_lora.params import load_params
from fashion_lora.provision import provision_base
from fashion_lora.stage import setup_logging
from fashion_lora.training import Outputs, train


def build_data(root: Path, params, res: int) -> tuple[Path, list[dict]]:
    """Synthetic images -> filtered rows -> latents at `res` (the pipeline's own functions)."""
    import json

    rows = sample_and_split(filter_entries(json.loads((root / "captions.json").read_text()), root / "images",
                                           replace(params.filter, workers=1))[0], 10_000, 0.1, 0)
    pp = replace(params.precompute, resolution=res, shape="square")  # speed per square size
    vae = load_base(root / "base", torch.device("cpu")).vae
    out = root / f"latents{res}"
    w = ShardWriter(out, 1024, torch.float16)
    for r in rows:
        x = prepare(0, str(root / "images" / r["image_name"]), pp, [(res, res)])
        w.add(encode(vae, to_vae_input([x.pixels]))[0], {**r, "bucket": [res, res], "crop": list(x.crop),
                                                         "orig_size": list(x.orig_size)})
    w.close({"resolution": res})
    return out, rows


def limit_loop(base_dir: Path, params, latents: torch.Tensor, steps: int) -> float:
    """Seconds per step of UNet fwd + bwd + AdamW on one resident batch and fixed embeddings."""
    base = load_base(base_dir, torch.device("cpu"), with_vae=False)
    attach_lora(base.unet, params.train.lora)
    opt = torch.optim.AdamW([q for q in base.unet.parameters() if q.requires_grad], lr=1e-4)
    b = params.train.batch_size
    lat = latents[:b]
    encoder_hidden_states = torch.randn(b, 77, base.text_encoder.config.hidden_size)
    noise, t = torch.randn_like(lat), torch.randint(0, 1000, (b,))
    base.unet.train()

    def step(_):
        loss = diffusion.training_loss(base.unet, base.noise_scheduler, lat, noise, t, encoder_hidden_states, None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return seconds_per_call(step, steps, warmup=3)


def reference_loop(base_dir: Path, params, rows: list[dict], images: Path, res: int, steps: int) -> float:
    """Seconds per step the common way: decode, resize, VAE-encode and tokenize every step."""
    base = load_base(base_dir, torch.device("cpu"))
    attach_lora(base.unet, params.train.lora)
    opt = torch.optim.AdamW([q for q in base.unet.parameters() if q.requires_grad], lr=1e-4)
    pp = replace(params.precompute, resolution=res)
    b = params.train.batch_size
    gen = torch.Generator().manual_seed(0)
    base.unet.train()

    def step(i):
        batch = [rows[(i * b + j) % len(rows)] for j in range(b)]
        pix = [prepare(0, str(images / r["image_name"]), pp, [(res, res)]).pixels for r in batch]
        lat = encode(base.vae, to_vae_input(pix))
        ids = base.tokenizer([r["caption"] for r in batch], padding="max_length", truncation=True,
                             max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            encoder_hidden_states = base.text_encoder(ids)[0]
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, 1000, (b,), generator=gen)
        loss = diffusion.training_loss(base.unet, base.noise_scheduler, lat, noise, t, encoder_hidden_states, None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return seconds_per_call(step, steps, warmup=3)


def ours(base_dir: Path, params, latent_dir: Path, steps: int, work: Path, profile: bool = False) -> tuple[float, str]:
    """Seconds per step of the real train() loop (validation effectively off), from its report."""
    p = replace(params, train=replace(params.train, max_steps=steps, val_every=10**6, checkpoint_every=10**6))
    shutil.rmtree(work, ignore_errors=True)
    out = Outputs(lora_dir=work / "lora", live_dir=work / "live", checkpoint_dir=work / "ck")
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    report = train(p, base_dir, latent_dir, out)
    top = ""
    if prof:
        prof.disable()
        import io

        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
        top = s.getvalue()
    return 1 / report["steps_per_second"], top


def breakdown(base_dir: Path, params, latent_dir: Path, n: int = 200) -> dict:
    """Milliseconds per step of the parts of our step that the limit does not have."""
    from dvclive import Live

    from fashion_lora.training.data import LatentBatches, TextEmbeddings

    base = load_base(base_dir, torch.device("cpu"), with_vae=False)
    train_latents = load_latents(latent_dir, "train")
    captions = [it["caption"] for it in train_latents.items]
    batches = LatentBatches(train_latents, captions, base.tokenizer, params.train, params.seed)
    text = TextEmbeddings(base.text_encoder, batches.token_ids, torch.device("cpu"))

    def per_call(fn) -> float:
        return 1000 * seconds_per_call(fn, n)

    with tempfile.TemporaryDirectory() as tmp:
        live = Live(tmp, dvcyaml=False, save_dvc_exp=False, report=None)

        def log(i):
            live.step = i
            for name in ("train/loss", "train/grad_norm", "train/lr"):
                live.log_metric(name, 0.5)

        out = {"batch_and_augment_ms": per_call(lambda i: batches.batch(i)),
               "text_embeddings_ms": per_call(lambda i: text(batches.batch(i)[1])) - per_call(lambda i: batches.batch(i)),
               "dvclive_logging_ms": per_call(log)}
        live.end()
    return {k: round(v, 3) for k, v in out.items()}


def main(argv=None) -> None:
    setup_logging()
    import logging

    logging.getLogger("fashion_lora").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    args = ap.parse_args(argv)
    params = load_params()
    # what the train stage resolves `train.max_token_length: auto` to for these synthetic captions
    params = replace(params, train=replace(params.train, max_token_length=77))
    results, rows_out = {}, [("res", "ours steps/s", "reference steps/s", "speedup", "limit steps/s",
                              "ours/limit step time")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        embedded.write_dataset(root, 160, seed=3)
        provision_base("tiny-random", 0, root / "base")
        for res in args.resolutions:
            latent_dir, rows = build_data(root, params, res)
            train_lat = load_latents(latent_dir, "train").tensors[0]
            o = [ours(root / "base", params, latent_dir, args.steps, root / "run")[0] for _ in range(args.reps)]
            r = [reference_loop(root / "base", params, rows, root / "images", res, args.steps) for _ in range(args.reps)]
            lim = [limit_loop(root / "base", params, train_lat, args.steps) for _ in range(args.reps)]
            med = {k: statistics.median(v) for k, v in (("ours", o), ("reference", r), ("limit", lim))}
            results[str(res)] = {
                "batch_size": params.train.batch_size, "steps": args.steps,
                "ours_s_per_step": {"min": min(o), "median": med["ours"]},
                "reference_s_per_step": {"min": min(r), "median": med["reference"]},
                "limit_s_per_step": {"min": min(lim), "median": med["limit"]},
                "speedup_vs_reference": med["reference"] / med["ours"],
                "ours_over_limit": med["ours"] / med["limit"],
            }
            results[str(res)]["rest_of_step_ms"] = breakdown(root / "base", params, latent_dir)
            rows_out.append((res, f"{1 / med['ours']:.2f}", f"{1 / med['reference']:.2f}",
                             f"{med['reference'] / med['ours']:.2f}x", f"{1 / med['limit']:.2f}",
                             f"{med['ours'] / med['limit']:.3f}"))
        _, profile = ours(root / "base", params, root / f"latents{args.resolutions[0]}", args.steps, root / "run",
                          profile=True)
    results["profile_top_cumulative"] = profile.splitlines()[:45]
    write("train_step", results, rows_out)


if __name__ == "__main__":
    main()

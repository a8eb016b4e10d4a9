"""precompute stage: data/fashion_data.csv -> data/latents/ (sharded .pt + index) + reports/precompute.json."""

import logging

import pandas as pd

from fashion_lora import paths
from fashion_lora.base import load_base, model_step
from fashion_lora.buckets import bucket_name, buckets_for
from fashion_lora.devices import configure_torch, resolve_device
from fashion_lora.disk import ensure_space
from fashion_lora.files import write_json
from fashion_lora.params import load_params
from fashion_lora.precision import inference_dtype
from fashion_lora.precompute import encode_dataset, precompute_report
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.precompute")


def main() -> None:
    params = load_params()
    configure_torch(params, "precompute")
    ensure_space(params, "data/latents")
    settings = params.precompute
    device = resolve_device(settings.device, "precompute.device")
    df = pd.read_csv(paths.CSV, keep_default_na=False)
    base = load_base(paths.BASE, device, inference_dtype(settings.precision, device, "precompute.precision"))
    buckets = buckets_for(settings, model_step(base.vae, base.unet))
    log.info("%s at %d px: %s", settings.shape, settings.resolution, ", ".join(bucket_name(b) for b in buckets))
    index, drops, seconds = encode_dataset(df, base.vae, settings, paths.LATENTS, buckets)
    report = precompute_report(index, len(df), drops, seconds, paths.LATENTS, device, settings)
    write_json(paths.PRECOMPUTE_REPORT, report)
    log.info("encoded %d of %d rows into %d shard(s); per bucket %s; area kept mean %.3f min %.3f; dropped %s; "
             "%.1f images/s on %s", report["encoded"], len(df), report["shards"], report["buckets"],
             report["area_kept"]["mean"], report["area_kept"]["min"], dict(drops), report["images_per_second"], device)
    if "flip_gap" in report:
        log.info("mirrored images encoded too: the mirrored latent is off the latent of the mirrored image by a "
                 "relative MSE of %.4f (per channel %s)", report["flip_gap"]["relative_mse"],
                 report["flip_gap"]["relative_mse_per_channel"])


if __name__ == "__main__":
    run_stage(main)

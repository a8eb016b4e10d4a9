"""How far train's latent flips are from the latent of the mirrored image, after a `dvc repro`:
the reconstruction of held-out images through the VAE three ways, as PSNR against the image
(the image itself; the mirrored latent, against the mirrored image; the latent of the mirrored
image, against the mirrored image), and the latents' relative gap (as `precompute.flipped`
reports it).

    python -m benchmarks.flip_gap [--images 64]

Reads models/base, data/fashion_data.csv and params.yaml; writes reports/bench/flip_gap.json.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from benchmarks.common import write
from fashion_lora import paths
from fashion_lora.base import load_base
from fashion_lora.images import prepare, to_vae_input
from fashion_lora.params import load_params
from fashion_lora.precompute import FlipGap


def psnr(decoded: torch.Tensor, target: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1]."""
    mse = ((decoded.clamp(-1, 1) - target) ** 2).mean(dim=(1, 2, 3))
    return round(float((10 * torch.log10(4 / mse)).mean()), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="held-out (val) images to measure")
    args = ap.parse_args()
    params = load_params()
    torch.set_num_threads(params.cpu_threads or torch.get_num_threads())
    df = pd.read_csv(paths.CSV, keep_default_na=False)
    df = df[df.split == "val"].head(args.images)
    vae = load_base(paths.BASE, torch.device("cpu")).vae
    prepared = [prepare(i, path, params.precompute, [(64, 96)]) for i, path in enumerate(df.image_path)]
    x = to_vae_input([p.pixels for p in prepared if p.reason is None])
    with torch.no_grad():
        z, z_of_mirror = vae.encode(x).latent_dist.mean, vae.encode(x.flip(-1)).latent_dist.mean
        result = {"images": len(x),
                  "psnr_db": {"image": psnr(vae.decode(z).sample, x),
                              "mirrored_latent": psnr(vae.decode(z.flip(-1)).sample, x.flip(-1)),
                              "latent_of_mirrored_image": psnr(vae.decode(z_of_mirror).sample, x.flip(-1))}}
    gap = FlipGap()
    gap.add(z, z_of_mirror)
    result["latent_gap"] = gap.result()
    rows = [(k, v) for k, v in result["psnr_db"].items()] + [("relative latent MSE", result["latent_gap"]["relative_mse"])]
    write("flip_gap", result, rows)


if __name__ == "__main__":
    main()

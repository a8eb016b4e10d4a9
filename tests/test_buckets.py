"""Aspect-ratio buckets: sizes, choice, crops, single-bucket batches, validation over buckets,
generate `auto` and the sheets on portraits, resume with buckets."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_lora.base import load_base, model_step
from fashion_lora.buckets import buckets_for, make_buckets, nearest_bucket, size_step
from fashion_lora.images import area_kept, resize_crop
from fashion_lora.inference import image_size
from fashion_lora.latents import LatentGroups, LatentsError, load_latents
from fashion_lora.lora import LORA_WEIGHTS
from fashion_lora.sd15 import sd15_unet_config
from fashion_lora.sheets import grid
from fashion_lora.training import train
from fashion_lora.training.data import LatentBatches
from fashion_lora.val_loss import eval_losses, fixed_eval
from tests.helpers import CAPTIONS, Crash, crash_at, outputs, small_params, train_params

DEEPFASHION = (750, 1101)  # every DeepFashion-MultiModal image


def test_size_step_comes_from_the_model(tiny_base):
    base = load_base(tiny_base, torch.device("cpu"))
    assert model_step(base.vae, base.unet) == 32  # 8 px per latent cell x 2 UNet downsamplings
    assert size_step(8, sd15_unet_config()["block_out_channels"]) == 64


def test_short_side_buckets_and_the_choice_on_known_sizes():
    sd = make_buckets(512, 64, 0.4, 1.5, "short_side")
    assert {(512, 512), (512, 768), (768, 512), (512, 1280)} <= set(sd)
    assert all(w % 64 == 0 and h % 64 == 0 and 0.4 <= w / h <= 1.5 for w, h in sd)
    assert nearest_bucket(*DEEPFASHION, sd) == (512, 768)  # portrait
    assert nearest_bucket(1101, 750, sd) == (768, 512)  # landscape
    assert nearest_bucket(600, 600, sd) == (512, 512)  # square
    assert nearest_bucket(400, 1000, sd) == (512, 1280)  # extreme portrait (aspect 0.4)
    tiny = make_buckets(64, 32, 0.4, 1.5, "short_side")
    assert tiny == [(64, 64), (64, 96), (64, 128), (64, 160), (96, 64)]
    assert nearest_bucket(300, 441, tiny) == (64, 96)  # the synthetic portraits
    assert nearest_bucket(441, 300, tiny) == (96, 64)


def test_area_buckets_stay_within_the_area():
    sd = make_buckets(512, 64, 0.4, 1.5, "area")
    assert (512, 512) in sd and all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in sd)
    assert nearest_bucket(*DEEPFASHION, sd) == (384, 640)
    assert make_buckets(64, 32, 0.4, 1.5, "area") == [(64, 64)]  # the tiny step is too coarse for more
    with pytest.raises(ValueError, match="aspect"):
        make_buckets(64, 32, 0.5, 0.8, "area")


def test_square_shape_is_one_bucket_and_limits_bound_the_buckets():
    pre = small_params().precompute
    assert buckets_for(replace(pre, shape="square"), 32) == [(64, 64)]
    narrow = buckets_for(replace(pre, min_aspect=0.6, max_aspect=1.0), 32)
    assert narrow == [(64, 64), (64, 96)]


def test_buckets_keep_the_whole_figure():
    """The square keeps ~0.68 of a DeepFashion photo; its bucket keeps nearly all of it."""
    img = Image.new("RGB", DEEPFASHION)
    for bucket, low, high in (((512, 512), 0.67, 0.69), ((512, 768), 0.97, 1.0), ((384, 640), 0.88, 0.91),
                              ((64, 96), 0.97, 1.0)):
        out, box = resize_crop(img, bucket, "center")
        assert out.size == bucket and low <= area_kept(box, DEEPFASHION) <= high, bucket


def test_batches_come_from_one_bucket_and_ranks_never_share_items(tiny_base):
    tok = load_base(tiny_base, torch.device("cpu"), with_vae=False).tokenizer
    p = train_params(batch_size=4)
    sizes, shapes = [37, 5, 1], [(4, 8, 8), (4, 12, 8), (4, 8, 12)]
    groups = LatentGroups([torch.arange(n * 4 * h * w, dtype=torch.float32).view(n, 4, h, w) + 1e4 * g
                           for g, (n, (_, h, w)) in enumerate(zip(sizes, shapes))], [{}] * sum(sizes))
    caps = [CAPTIONS[i % 3] for i in range(sum(sizes))]
    ranks = [LatentBatches(groups, caps, tok, p.train, seed=3, rank=r, world=2) for r in (0, 1)]
    assert ranks[0].per_epoch == 37 // 8 + 1 + 1
    seen = {g: set() for g in range(3)}
    for step in range(3 * ranks[0].per_epoch):
        (g0, i0), (g1, i1) = (b.indices(step) for b in ranks)
        assert g0 == g1  # both processes train the same bucket in a step
        if sizes[g0] >= 2:
            assert not set(i0.tolist()) & set(i1.tolist())  # and never the same item
        assert len(i0) == (4 if sizes[g0] >= 8 else max(1, sizes[g0] // 2))
        lat, rows = ranks[0].batch(step)
        assert tuple(lat.shape[1:]) == shapes[g0] and len(rows) == len(i0)
        seen[g0] |= set(i0.tolist()) | set(i1.tolist())
    assert seen[1] == set(range(5)) and seen[2] == {0}  # small buckets are trained, not starved
    assert len(seen[0]) > 30
    fresh = LatentBatches(groups, caps, tok, p.train, seed=3, rank=1, world=2)  # a resumed process
    for step in (0, 5, 13):
        assert all(torch.equal(a, b) for a, b in zip(fresh.batch(step), ranks[1].batch(step)))


def test_val_plan_over_buckets_is_fixed_per_item_and_batching_does_not_change_it(tiny_base):
    a = fixed_eval([(4, 8, 8), (4, 12, 8), (4, 8, 8)], 2, 1000, seed=5)
    b = fixed_eval([(4, 8, 8), (4, 8, 8), (4, 8, 12)], 2, 1000, seed=5)
    assert torch.equal(a.timesteps, b.timesteps)
    assert torch.equal(a.noise[0], b.noise[0]) and a.noise[1].shape == (4, 12, 8)  # item 0: same noise
    base = load_base(tiny_base, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    latents = [torch.randn(s, generator=gen) for s in [(4, 8, 8), (4, 12, 8), (4, 8, 8)]]
    ehs = torch.randn(3, 77, base.text_encoder.config.hidden_size, generator=gen)
    one = eval_losses(base.unet, base.noise_scheduler, latents, ehs, a, batch_size=1)
    many = eval_losses(base.unet, base.noise_scheduler, latents, ehs, a, batch_size=8)
    assert torch.allclose(one[0], many[0], atol=1e-5) and len(one[0]) == 6


def test_generate_auto_is_the_most_common_train_bucket(tmp_path, bucket_latent_dir):
    index = json.loads((bucket_latent_dir / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**index, "meta": {**index["meta"], "train_bucket": [64, 96]}}))
    assert image_size("auto", "auto", tmp_path) == (96, 64)  # (height, width): a portrait
    assert image_size(128, "auto", tmp_path) == (128, 64)
    assert image_size(32, 40, tmp_path / "nowhere") == (32, 40)  # numbers need no index
    (tmp_path / "index.json").write_text(json.dumps({**index, "meta": {"resolution": 64}}))
    with pytest.raises(LatentsError, match="generate.height/width"):
        image_size("auto", "auto", tmp_path)


def test_precompute_writes_the_most_common_train_bucket(tmp_path, tiny_base):
    import pandas as pd

    from fashion_lora.precompute import encode_dataset, precompute_report

    rng = np.random.default_rng(0)
    rows = []
    for i, (w, h) in enumerate([(300, 441)] * 5 + [(441, 300)] * 3 + [(400, 400)] * 2 + [(300, 900)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image_path": str(tmp_path / f"{i}.png"), "image_name": f"{i}.png", "caption": "c",
                     "split": "val" if i == 9 else "train"})
    pre = small_params().precompute
    buckets = buckets_for(pre, 32)
    base = load_base(tiny_base, torch.device("cpu"))
    index, drops, seconds = encode_dataset(pd.DataFrame(rows), base.vae, pre, tmp_path / "lat", buckets)
    assert index["meta"]["train_bucket"] == [64, 96] and dict(drops) == {"bad_aspect": 1}  # 300x900: 0.33
    report = precompute_report(index, 11, drops, seconds, tmp_path / "lat", torch.device("cpu"), pre)
    assert report["buckets"] == {"64x64": {"train": 1, "val": 1}, "64x96": {"train": 5, "val": 0},
                                 "96x64": {"train": 3, "val": 0}}
    assert report["area_kept"]["min"] > 0.9
    groups = load_latents(tmp_path / "lat")
    for t, it in zip(groups.per_item(), groups.items):
        assert tuple(t.shape[1:]) == (it["bucket"][1] // 8, it["bucket"][0] // 8)  # each latent fits its bucket


def test_sheet_cells_keep_the_portrait_aspect():
    img = Image.new("RGB", (64, 96), "red")
    sheet = grid([("p", [("a", img), ("b", img)])], cell=160)
    cell_w = (sheet.width - 220) // 2
    assert abs(cell_w - 4 - round(156 * 64 / 96)) <= 1
    square = grid([("p", [("a", Image.new("RGB", (64, 64)))])], cell=160)
    assert square.width - 220 == 160


def test_resume_with_buckets_is_bit_exact(tmp_path, tiny_base, bucket_latent_dir):
    """Batches from three train buckets (one of a single image) and val items in a bucket no
    train item has: a run cut at step 8 and resumed ends with the same files."""
    p = train_params(max_steps=12, val_every=4, checkpoint_every=4)
    full = train(p, tiny_base, bucket_latent_dir, outputs(tmp_path / "full"))
    with pytest.raises(Crash):
        train(p, tiny_base, bucket_latent_dir, outputs(tmp_path / "cut"), on_validation=crash_at(8))
    report = train(p, tiny_base, bucket_latent_dir, outputs(tmp_path / "cut"))
    assert report["resumed_from_step"] == 4 and full["steps"] == 12
    for rel in (LORA_WEIGHTS, f"last/{LORA_WEIGHTS}"):
        assert (tmp_path / "full/lora" / rel).read_bytes() == (tmp_path / "cut/lora" / rel).read_bytes(), rel
    assert (tmp_path / "full/live/plots/metrics/val/mse.tsv").read_text() == \
        (tmp_path / "cut/live/plots/metrics/val/mse.tsv").read_text()


def test_changed_bucket_settings_refuse_the_checkpoint(tmp_path, tiny_base, bucket_latent_dir, caplog):
    import logging
    import shutil

    p = train_params(max_steps=4, val_every=4, checkpoint_every=4)
    train(p, tiny_base, bucket_latent_dir, outputs(tmp_path / "run"))
    other = tmp_path / "latents"
    shutil.copytree(bucket_latent_dir, other)
    index = json.loads((other / "index.json").read_text())
    index["meta"]["bucket_size"] = "area"
    (other / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.INFO, logger="fashion_lora"):
        report = train(p, tiny_base, other, outputs(tmp_path / "run"))
    assert report["resumed_from_step"] is None or report["resumed_from_step"] == 0
    assert "bucket settings of the latents changed (bucket_size 'short_side' -> 'area')" in caplog.text


def test_mixed_aspect_local_folder_through_filter_precompute_and_train(tmp_path, tiny_base):
    """A `data.source: local` folder of landscape, square, portrait and extreme photos: the
    extremes are dropped with their reason, the rest land in several buckets, and a short
    train on tiny-random runs on them."""
    import pandas as pd

    from fashion_lora.captions import load_captions
    from fashion_lora.filtering import filter_entries, sample_and_split
    from fashion_lora.precompute import encode_dataset, precompute_report
    from fashion_lora.sources import fetch

    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"portrait": (300, 441), "landscape": (441, 300), "square": (320, 320), "tall": (270, 600),
             "too_tall": (260, 700), "too_wide": (600, 260)}
    captions = {}
    for kind, (w, h) in sizes.items():
        for i in range(6 if kind in ("portrait", "landscape", "square") else 2):
            name = f"id_{kind}{i:02d}-{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / name, quality=92)
            captions[name] = f"The lady wears a {kind} shirt with solid color patterns."
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    p = small_params({"data.source": "local", "data.local.images": str(src),
                      "data.local.captions": str(tmp_path / "captions.json"), "filter.val_fraction": 0.2})
    raw = tmp_path / "raw"
    raw.mkdir()
    fetch(p, raw)
    kept, _, _ = filter_entries(load_captions(raw / "captions.json"), raw / "images", p.filter)
    rows = sample_and_split(kept, 100, p.filter.val_fraction, p.seed)
    df = pd.DataFrame([{**r, "image_path": str(raw / "images" / r["image_name"])} for r in rows])
    base = load_base(tiny_base, torch.device("cpu"))
    latent_dir = tmp_path / "latents"
    index, drops, seconds = encode_dataset(df, base.vae, p.precompute, latent_dir,
                                           buckets_for(p.precompute, model_step(base.vae, base.unet)))
    report = precompute_report(index, len(df), drops, seconds, latent_dir, torch.device("cpu"), p.precompute)
    assert report["dropped"] == {"bad_aspect": 4}  # 0.37 and 2.3: outside [0.4, 1.5]
    buckets = {b for b, n in report["buckets"].items() if n["train"] + n["val"]}
    assert buckets == {"64x96", "96x64", "64x64", "64x128"}
    assert report["train"] > 0 and report["val"] > 0
    out = train(train_params(max_steps=6, val_every=3, checkpoint_every=6), tiny_base, latent_dir,
                outputs(tmp_path / "run"))
    assert out["steps"] == 6 and (tmp_path / "run/lora" / LORA_WEIGHTS).is_file()

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_lora.base import load_base
from fashion_lora.errors import UserError
from fashion_lora.images import area_kept, prepare, quality_reason, resize_crop, to_vae_input
from fashion_lora.latents import LatentsError, ShardWriter, encode, load_latents, load_shard
from fashion_lora.provision import provision_base
from fashion_lora.tiny import build_clip_tokenizer
from tests.helpers import blur, small_params


def test_tokenizer_matches_reference_ids(tmp_path):
    tok = build_clip_tokenizer(tmp_path)
    assert tok("a photo of a red dress").input_ids == [49406, 320, 1125, 539, 320, 736, 2595, 49407]
    assert tok.model_max_length == 77


def test_base_folder_has_what_transformers_4_reads(tmp_path, tiny_base):
    """models/base as the previous stack reads it (benchmarks/previous_stack.py loads it there):
    the text encoder's weights under CLIP's classic `text_model.` keys, and the slow tokenizer's
    vocab.json / merges.txt beside tokenizer.json, giving the same ids; the pinned stack reads
    every weight of those keys."""
    import json

    from safetensors import safe_open
    from transformers import CLIPTextModel, CLIPTokenizer

    with safe_open(str(tiny_base / "text_encoder/model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)
    encoder, info = CLIPTextModel.from_pretrained(tiny_base / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    folder = tiny_base / "tokenizer"
    assert json.loads((folder / "vocab.json").read_text())["<|endoftext|>"] == 49407
    assert (folder / "merges.txt").read_text().startswith("#version: 0.2\n")
    from_json = CLIPTokenizer.from_pretrained(folder)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):  # what 4.x's slow tokenizer reads
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    from_files = CLIPTokenizer.from_pretrained(tmp_path)
    caption = "The lady wears a short-sleeve T-shirt with cotton fabric and color block patterns."
    assert from_files(caption).input_ids == from_json(caption).input_ids


def _tree_hash(folder: Path) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_tiny_builds_identically_and_round_trips(tmp_path, tiny_base):
    provision_base("tiny-random", 42, tmp_path / "again")
    assert _tree_hash(tmp_path / "again") == _tree_hash(tiny_base)
    base = load_base(tiny_base, torch.device("cpu"))
    names = {n for n, _ in base.unet.named_modules()}
    for target in ("to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"):
        assert any(n.endswith("." + target) for n in names), target
    assert not any(p.requires_grad for p in base.unet.parameters())
    # the pipeline that later stages load reads the same weights back
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    for (n, a), (_, b) in zip(base.unet.state_dict().items(), pipe.unet.state_dict().items()):
        assert torch.equal(a, b), n


def test_vae_latent_shape(tiny_base):
    base = load_base(tiny_base, torch.device("cpu"))
    lat = encode(base.vae, torch.zeros(2, 3, 64, 64))
    assert lat.shape == (2, 4, 8, 8)


def test_bad_base_values(tmp_path):
    with pytest.raises(UserError, match="model.base"):
        provision_base(str(tmp_path / "missing-folder"), 0, tmp_path / "out")
    (tmp_path / "notdiffusers").mkdir()
    with pytest.raises(UserError, match="model_index.json"):
        provision_base(str(tmp_path / "notdiffusers"), 0, tmp_path / "out")


def test_hub_offline_names_the_param(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="model.base.*local"):
        provision_base("someone/not-cached-model", 0, tmp_path / "out")


def test_aspect_preserving_crop_keeps_proportions():
    img = Image.new("RGB", (750, 1101))
    arr = np.zeros((1101, 750, 3), np.uint8)
    arr[:, 370:380] = 255  # a vertical bar in the middle
    img = Image.fromarray(arr)
    square, box = resize_crop(img, (512, 512), "center")
    assert square.size == (512, 512)
    left, top, right, bottom = box
    assert right - left == 750 and abs((bottom - top) - 750) <= 1  # a square of the original: no squashing
    col = np.asarray(square)[256].mean(axis=-1)
    assert abs(int(np.argmax(col)) - 256) <= 4  # the bar stays centred and thin
    _, box_top = resize_crop(img, (512, 512), "top")
    assert box_top[1] == 0
    assert abs(area_kept(box, (750, 1101)) - 750 / 1101) < 0.01  # the square keeps ~0.68 of a portrait
    portrait, box = resize_crop(img, (512, 768), "center")  # SD1.5's portrait bucket
    assert portrait.size == (512, 768) and area_kept(box, (750, 1101)) > 0.97
    col = np.asarray(portrait)[384].mean(axis=-1)
    assert abs(int(np.argmax(col)) - 256) <= 4  # still centred: covered, not squashed


def test_quality_checks_drop_with_reasons():
    rng = np.random.default_rng(0)
    sharp = Image.fromarray(rng.integers(0, 255, (440, 300, 3), dtype=np.uint8))
    assert quality_reason(sharp, 256, 5.0, 0.4, 1.5) is None
    assert quality_reason(blur(Image.new("RGB", (300, 440), "red")), 256, 5.0, 0.4, 1.5) == "blurry"
    assert quality_reason(sharp.resize((300, 1000)), 256, 5.0, 0.4, 1.5) == "bad_aspect"
    assert quality_reason(sharp.resize((200, 300)), 256, 5.0, 0.4, 1.5) == "too_small"


def test_prepare_drops_blurry_and_crops(tmp_path):
    p = small_params().precompute
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (440, 300, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    blur(Image.new("RGB", (300, 440), "red")).save(tmp_path / "blurry.png")
    ok = prepare(0, str(tmp_path / "ok.png"), p, [(64, 64)])
    assert ok.reason is None and ok.pixels.shape == (64, 64, 3) and ok.orig_size == (300, 440)
    ok = prepare(0, str(tmp_path / "ok.png"), p, [(64, 64), (64, 96), (96, 64)])
    assert ok.bucket == (64, 96) and ok.pixels.shape == (96, 64, 3)  # the portrait bucket, whole
    assert prepare(1, str(tmp_path / "blurry.png"), p, [(64, 64)]).reason == "blurry"


def _write_shards(out: Path, n=10, shard_size=4):
    w = ShardWriter(out, shard_size, torch.float16)
    lat = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for i in range(n):
        w.add(lat[i], {"image_name": f"{i}.jpg", "caption": f"c{i}", "split": "val" if i % 3 == 0 else "train",
                       "bucket": [64, 64], "crop": [0, 0, 1, 1], "orig_size": [1, 1]})
    w.close({"resolution": 64})
    return lat


def test_shards_round_trip_and_match_index(tmp_path):
    lat = _write_shards(tmp_path)
    assert len(list(tmp_path.glob("shard_*.pt"))) == 3
    everything = load_latents(tmp_path)
    assert len(everything.tensors) == 1 and torch.allclose(everything.tensors[0], lat.half().float())
    val = load_latents(tmp_path, "val")
    assert [it["image_name"] for it in val.items] == ["0.jpg", "3.jpg", "6.jpg", "9.jpg"]
    assert torch.equal(val.tensors[0], everything.tensors[0][[0, 3, 6, 9]])


def test_shards_hold_one_bucket_each_and_load_grouped(tmp_path):
    """Latents of several shapes: every shard holds one shape, the loader groups by shape (sorted)
    and keeps index order within a group, and every latent comes back with its own entry."""
    w = ShardWriter(tmp_path, 3, torch.float32)
    shapes = [(4, 12, 8), (4, 8, 8), (4, 8, 12)]
    lat = [torch.full(shapes[i % 3], float(i)) for i in range(11)]
    for i, x in enumerate(lat):
        w.add(x, {"image_name": f"{i}.jpg", "split": "train", "bucket": [x.shape[2] * 8, x.shape[1] * 8]})
    index = w.close({})
    for shard in index["shards"]:
        data = load_shard(tmp_path / shard["file"])
        assert len({tuple(index["items"][i]["bucket"]) for i in data["items"].tolist()}) == 1
    groups = load_latents(tmp_path)
    assert [tuple(t.shape[1:]) for t in groups.tensors] == sorted(shapes)
    assert groups.sizes == [4, 3, 4] and groups.offsets == [0, 4, 7]
    for x, it in zip(groups.per_item(), groups.items):
        i = int(it["image_name"].split(".")[0])
        assert torch.equal(x, lat[i])  # its own latent, shape and value
    names = [int(it["image_name"].split(".")[0]) for it in groups.items]
    assert names[:4] == [1, 4, 7, 10]  # (4, 8, 8) first, in index order


def test_mirrored_latents_travel_with_their_items(tmp_path):
    """Shards with mirrored latents load them aligned with the plain ones, split by split; an
    index that disagrees with its shards about them is an error that says how to fix it."""
    w = ShardWriter(tmp_path, 4, torch.float32)
    for i in range(10):
        w.add(torch.full((4, 8, 8), float(i)), {"image_name": f"{i}.jpg", "split": "val" if i % 3 == 0 else "train",
                                                "bucket": [64, 64]}, torch.full((4, 8, 8), -float(i)))
    w.close({"flipped": True})
    assert set(load_shard(tmp_path / "shard_00000.pt")) == {"latents", "items", "flipped"}
    for split in (None, "train", "val"):
        groups = load_latents(tmp_path, split)
        assert torch.equal(groups.flipped[0], -groups.tensors[0]) and len(groups.flipped[0]) == len(groups)
        assert groups.to("cpu").flipped is not None and groups.nbytes == 2 * groups.tensors[0].nbytes
    w = ShardWriter(tmp_path, 4, torch.float32)  # the same latents, the index not saying so
    for i in range(10):
        w.add(torch.full((4, 8, 8), float(i)), {"image_name": f"{i}.jpg", "split": "train", "bucket": [64, 64]},
              torch.full((4, 8, 8), -float(i)))
    w.close({})
    with pytest.raises(LatentsError, match="mirrored latents present.*dvc repro -f precompute"):
        load_latents(tmp_path)


def test_shards_are_byte_identical_across_runs(tmp_path):
    _write_shards(tmp_path / "a")
    _write_shards(tmp_path / "b")
    assert _tree_hash(tmp_path / "a") == _tree_hash(tmp_path / "b")


def test_corrupt_or_mismatched_shard_is_an_error(tmp_path):
    _write_shards(tmp_path)
    (tmp_path / "shard_00001.pt").write_bytes(b"garbage")
    with pytest.raises(LatentsError, match="shard_00001.pt"):
        load_latents(tmp_path)
    _write_shards(tmp_path)
    torch.save({"latents": torch.zeros(1, 4, 8, 8), "items": torch.tensor([5])}, tmp_path / "shard_00000.pt")
    with pytest.raises(LatentsError, match="does not match"):
        load_latents(tmp_path)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_bearing_shard_is_refused(tmp_path):
    with open(tmp_path / "shard_00000.pt", "wb") as f:
        pickle.dump({"latents": Evil(), "items": Evil()}, f)
    with pytest.raises(LatentsError, match="weights_only"):
        load_shard(tmp_path / "shard_00000.pt")


def test_fp16_latents_reconstruct_like_fp32(tiny_base):
    """Storing latents in fp16 changes the decoded image by far less than one 8-bit level."""
    base = load_base(tiny_base, torch.device("cpu"))
    x = to_vae_input([np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)])
    lat = encode(base.vae, x)
    s = base.vae.config.scaling_factor
    with torch.no_grad():
        d32 = base.vae.decode(lat / s).sample
        d16 = base.vae.decode(lat.half().float() / s).sample
    assert (d32 - d16).abs().max().item() * 127.5 < 1.0


def test_precompute_flipped_stores_the_latent_of_each_mirrored_image(tmp_path, tiny_base):
    """`precompute.flipped`: beside each latent the VAE's latent of the mirrored image, the plain
    latents as without it, and the gap between a mirrored latent and that one in the report."""
    from dataclasses import replace

    import pandas as pd

    from fashion_lora.precompute import encode_dataset, precompute_report

    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    df = pd.DataFrame({"image_path": paths, "image_name": [Path(p).name for p in paths],
                       "caption": [f"c{i}" for i in range(6)], "split": ["train", "val"] * 3})
    vae = load_base(tiny_base, torch.device("cpu")).vae
    pre = replace(small_params().precompute, workers=1, batch_size=4, dtype="float32")
    plain, _, _ = encode_dataset(df, vae, replace(pre, flipped=False), tmp_path / "plain", [(64, 64)])
    index, drops, seconds = encode_dataset(df, vae, replace(pre, flipped=True), tmp_path / "both", [(64, 64)])
    assert "flipped" not in plain["meta"] and index["meta"]["flipped"] is True
    off, on = load_latents(tmp_path / "plain"), load_latents(tmp_path / "both")
    assert off.flipped is None and torch.equal(on.tensors[0], off.tensors[0])
    for k, it in enumerate(on.items):
        x = to_vae_input([prepare(0, str(tmp_path / it["image_name"]), pre, [(64, 64)]).pixels])
        assert torch.allclose(on.flipped[0][k], encode(vae, x.flip(-1))[0], atol=1e-5)
    gap = precompute_report(index, len(df), drops, seconds, tmp_path / "both", torch.device("cpu"), pre)["flip_gap"]
    assert gap["images"] == 6 and len(gap["relative_mse_per_channel"]) == 4
    mirrored = on.tensors[0].flip(-1)
    expect = float((mirrored - on.flipped[0]).pow(2).mean() / on.flipped[0].var(dim=(0, 2, 3), unbiased=False).mean())
    assert gap["relative_mse"] == pytest.approx(expect, rel=1e-3) and gap["relative_mse"] > 0


def test_precompute_with_worker_threads_writes_the_same_latents(tmp_path, tiny_base):
    """Worker threads prepare the next window while the VAE encodes: with 1 worker, 2 or `auto`
    the shards and index are byte-identical, in row order, and the drops are counted alike."""
    from dataclasses import replace

    import pandas as pd

    from fashion_lora.precompute import encode_dataset

    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        img = Image.fromarray(rng.integers(0, 255, (300 + i, 260, 3), dtype=np.uint8))
        (blur(img) if i % 9 == 0 else img).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    df = pd.DataFrame({"image_path": paths, "image_name": [Path(p).name for p in paths],
                       "caption": [f"c{i}" for i in range(40)], "split": ["train"] * 40})
    vae = load_base(tiny_base, torch.device("cpu")).vae
    out = {}
    for workers in (1, 2, "auto"):  # batch 2 -> windows of 16 rows: the pool is used
        pre = replace(small_params().precompute, workers=workers, batch_size=2)
        # aspects 0.87 .. 0.77: two buckets, so the writer sorts each window by bucket
        index, drops, _ = encode_dataset(df, vae, pre, tmp_path / f"lat{workers}", [(64, 64), (64, 96), (96, 64)])
        out[workers] = (_tree_hash(tmp_path / f"lat{workers}"), dict(drops))
    assert out[1] == out[2] == out["auto"] and out[1][1] == {"blurry": 5}
    assert sorted(it["image_name"] for it in index["items"]) == sorted(f"{i}.png" for i in range(40) if i % 9)
    for bucket in ([64, 64], [64, 96]):
        rows = [int(it["image_name"][:-4]) for it in index["items"] if it["bucket"] == bucket]
        assert rows and rows == sorted(rows)  # row order within a bucket

"""The pretrained tiny base: withheld colour words, VAE quality, and a LoRA that learns the colour."""

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from fashion_lora import diffusion
from fashion_lora.buckets import buckets_for
from fashion_lora.evaluation import attribute_metrics, dominant_color
from fashion_lora.images import resize_crop
from fashion_lora.latents import ShardWriter, encode
from fashion_lora.lora import load_pipeline
from fashion_lora.pretrain import COLOR_WORDS, by_shape, corpus, provision_tiny, psnr, train_vae, withhold
from fashion_lora.sampling import lora_enabled
from fashion_lora.synthetic import COLORS, Garments, caption_for, random_garments, render
from fashion_lora.tiny import build_tiny
from fashion_lora.training import Outputs, train
from tests.helpers import small_params


def test_base_captions_never_hold_a_colour_word():
    pixels, captions = corpus(60, seed=5, buckets=[(64, 64), (64, 96), (96, 64)])
    assert len(pixels) == 60 and all(x.shape == (96, 64, 3) for x in pixels)  # whole portraits, as precompute cuts them
    rng = random.Random(0)
    captions += [caption_for(random_garments(rng)) for _ in range(500)]
    assert sum(bool(COLOR_WORDS.search(c)) for c in captions) == len(captions)  # the originals do
    for c in captions:
        neutral = withhold(c, "colored")
        assert "colored" in neutral
        assert not any(word in neutral.lower().replace(".", " ").split() for word in list(COLORS) + ["gray"]), neutral
    assert withhold("A Red shirt, GREY trousers; a redhead.", "plain") == "A plain shirt, plain trousers; a redhead."


def test_attribute_metric_reads_the_upper_garment_of_a_rendered_figure():
    """Hand-made images: a figure in each known colour is read correctly; grey is not red."""
    rng = random.Random(1)
    for color in COLORS:
        g = Garments("WOMEN", "shirt", "short-sleeve", color, "solid", "trousers",
                     "grey" if color != "grey" else "black", "solid")
        for bucket in ((64, 96), (64, 64)):
            img, _ = resize_crop(render(g, (280, 412), "front", rng), bucket, "center")
            assert dominant_color(img) == color
    assert dominant_color(Image.new("RGB", (64, 64), (128, 128, 128))) != "red"


def test_pretrained_vae_beats_a_psnr_floor(tmp_path):
    """A short pretraining (a fifth of the default) already reconstructs held-out images."""
    p = replace(small_params().model.pretrain, vae_steps=400)
    pipe = build_tiny(42, tmp_path)
    pixels, _ = corpus(700, seed=9, buckets=[(64, 96)])
    train_x, held = by_shape(pixels[:600])[0], by_shape(pixels[600:])[0]
    before = psnr(pipe.vae, held)
    train_vae(pipe.vae, train_x, p, seed=0)
    after = psnr(pipe.vae, held)
    assert after > 17.0 and after > before + 8.0, (before, after)


def _colour_run(tmp_path: Path, seed: int) -> dict:
    """The default demo in small: pretrain the tiny base (shorter), fine-tune the LoRA with the
    real `train` on colour captions of other images, then measure colour accuracy, base vs LoRA."""
    p = small_params({
        "seed": seed, "model.base": "tiny",
        "model.pretrain.images": 1100, "model.pretrain.holdout": 100,
        "model.pretrain.vae_steps": 400, "model.pretrain.unet_steps": 700,
        "train.max_steps": 1000, "train.restart_period": 1000, "train.val_every": 250,
        "train.checkpoint_every": 1000,
    })
    base_dir = tmp_path / "base"
    provision_tiny(seed, base_dir, p.model.pretrain, p.precompute)  # buckets, as the default
    pipe = load_pipeline(base_dir, None, torch.device("cpu"))
    pixels, captions = corpus(1000, seed=seed + 7, buckets=buckets_for(p.precompute, 32))  # not the pretraining images
    groups, order = by_shape(pixels)
    assert [tuple(g.shape[2:]) for g in groups] == [(96, 64)]  # the synthetic portraits: one bucket
    latents = encode(pipe.vae, groups[0])
    captions = [captions[i] for i in order]
    writer = ShardWriter(tmp_path / "latents", 1024, torch.float16)
    for i, (lat, cap) in enumerate(zip(latents, captions)):
        writer.add(lat, {"image_name": f"{i}.jpg", "caption": cap, "split": "val" if i % 20 == 0 else "train",
                         "bucket": [64, 96], "crop": [0, 0, 1, 1], "orig_size": [64, 96]})
    writer.close({"resolution": 64})
    out = tmp_path / "run"
    train(p, base_dir, tmp_path / "latents", Outputs(lora_dir=out / "lora", live_dir=out / "live", checkpoint_dir=out / "ckpt"))
    pipe = load_pipeline(base_dir, out / "lora", torch.device("cpu"))
    metrics, _ = attribute_metrics(pipe, 8, 4, 20, p.generate.guidance_scale, "", 96, 64, seed)
    held = [i for i in range(len(captions)) if i % 20 == 0]
    for name, enabled in (("base", False), ("lora", True)):
        with lora_enabled(pipe, enabled):
            metrics[f"{name}_wrong_colour_loss_ratio"] = _wrong_colour_loss_ratio(
                pipe, latents[held], [captions[i] for i in held])
    print(f"seed {seed}: {metrics}")  # shown with pytest -s; the note quotes these figures
    return metrics


def _wrong_colour_loss_ratio(pipe, latents: torch.Tensor, captions: list[str]) -> float:
    """Held-out denoising loss at high noise (t in [700, 1000), where the colour is decided) with
    every colour word swapped for another, divided by the loss with the true captions."""
    from diffusers import DDPMScheduler

    names = list(COLORS)
    wrong = [COLOR_WORDS.sub(lambda m: names[(names.index(m.group(0).lower()) + 5) % len(names)], c)
             for c in captions]
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.linspace(700, 999, len(latents)).long()
    losses = []
    with torch.no_grad():
        for caps in (wrong, captions):
            encoder_hidden_states = diffusion.encode_text(pipe.text_encoder, diffusion.tokenize(pipe.tokenizer, caps)[0])
            mse, _ = diffusion.per_sample_losses(pipe.unet, scheduler, latents, noise, t, encoder_hidden_states)
            losses.append(float(mse.mean()))
    return losses[0] / losses[1]


@pytest.mark.slow
def test_lora_follows_the_colour_that_the_pretrained_base_cannot(tmp_path):
    """End to end at the 64x96 bucket (about 4 minutes on 2 cores), a much shorter run than the
    default (which reaches 0.98 colour accuracy). Images: the base is near chance on colour prompts
    and the LoRA above it (measured with buckets, seed 42: base 0.03 / LoRA 0.25; the images of so
    short a run are noisy, hence the small margin). Loss: with the colours in held-out captions
    swapped, the base's high-noise loss does not change (it never learned colour words) and the
    LoRA's rises: the less noisy proof that the LoRA learned what the base could not (seed 42:
    base 0.994, LoRA 1.32).
    """
    m = _colour_run(tmp_path, seed=42)
    assert m["base_accuracy"] <= 0.2, m
    assert m["lora_accuracy"] >= m["base_accuracy"] + 0.05, m
    assert abs(m["base_wrong_colour_loss_ratio"] - 1) < 0.05, m
    assert m["lora_wrong_colour_loss_ratio"] > 1.2, m

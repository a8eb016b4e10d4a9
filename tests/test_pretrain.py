"""The pretrained tiny base: withheld pattern words, VAE quality, and a LoRA that learns the patterns."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fashion_lora import diffusion
from fashion_lora.buckets import buckets_for
from fashion_lora.grammar import parse_caption
from fashion_lora.latents import ShardWriter, encode
from fashion_lora.lora import load_pipeline
from fashion_lora.pretrain import by_shape, corpus, latent_scale, provision_tiny, psnr, train_vae
from fashion_lora.sampling import lora_enabled
from fashion_lora.synthetic import PATTERNS, caption_for
from fashion_lora.tiny import build_tiny
from fashion_lora.training import Outputs, train
from tests.helpers import small_params


def test_the_latent_scale_written_to_the_config_is_the_float32_the_latents_use():
    """Two machines whose std of the latents differs in its last bit (a reduction's order) wrote
    different config digits (models/base's md5) for latents that came out identical; the float32
    they are multiplied by is what is written now, and the latents stay what they were."""
    a = torch.tensor(0.8913999795913696, dtype=torch.float32)
    b = torch.tensor(0.8914000391960144, dtype=torch.float32)  # the next float32
    assert repr(1.0 / float(a)) != repr(1.0 / float(b))  # what the config held before
    assert repr(latent_scale(a)) == repr(latent_scale(b))
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x * latent_scale(a), x * (1.0 / float(a))) and torch.equal(x * (1.0 / float(b)), x * latent_scale(a))


def test_corpus_is_cut_like_precompute_and_its_base_captions_withhold_the_patterns():
    pixels, garments = corpus(60, seed=5, buckets=[(64, 64), (64, 96), (96, 64)])
    assert len(pixels) == 60 and all(x.shape == (96, 64, 3) for x in pixels)  # whole portraits, as precompute cuts them
    withheld = frozenset(small_params().model.pretrain.withheld)
    assert withheld == {"upper_pattern", "lower_pattern"}
    for g in garments:
        stated = parse_caption(caption_for(g, withheld, "some"))
        assert "upper_pattern" not in stated and "lower_pattern" not in stated
        assert stated["sleeve_length"] == g.sleeve and stated["lower_length"] == g.lower_length  # known to the base


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


def _pattern_run(tmp_path: Path, seed: int) -> dict:
    """The default demo in small: pretrain the tiny base (shorter) on captions without pattern
    words, fine-tune the LoRA with the real `train` on full captions of other images, then
    measure how much each model's high-noise loss depends on the pattern words."""
    p = small_params({
        "seed": seed, "model.base": "tiny",
        "model.pretrain.images": 800, "model.pretrain.holdout": 100,
        "model.pretrain.vae_steps": 300, "model.pretrain.unet_steps": 500,
        "train.max_steps": 400, "train.restart_period": 400, "train.val_every": 200,
        "train.checkpoint_every": 400, "train.max_token_length": 77,  # what the stage resolves `auto` to here
    })
    base_dir = tmp_path / "base"
    provision_tiny(seed, base_dir, p.model.pretrain, p.precompute)  # buckets, as the default
    pipe = load_pipeline(base_dir, None, torch.device("cpu"))
    pixels, garments = corpus(600, seed=seed + 7, buckets=buckets_for(p.precompute, 32))  # not the pretraining images
    groups, order = by_shape(pixels)
    assert [tuple(g.shape[2:]) for g in groups] == [(96, 64)]  # the synthetic portraits: one bucket
    latents = encode(pipe.vae, groups[0])
    garments = [garments[i] for i in order]
    writer = ShardWriter(tmp_path / "latents", 1024, torch.float16)
    for i, (lat, g) in enumerate(zip(latents, garments)):
        writer.add(lat, {"image_name": f"{i}.jpg", "caption": caption_for(g), "split": "val" if i % 20 == 0 else "train",
                         "bucket": [64, 96], "crop": [0, 0, 1, 1], "orig_size": [64, 96]})
    writer.close({"resolution": 64})
    out = tmp_path / "run"
    train(p, base_dir, tmp_path / "latents", Outputs(lora_dir=out / "lora", live_dir=out / "live", checkpoint_dir=out / "ckpt"))
    pipe = load_pipeline(base_dir, out / "lora", torch.device("cpu"))
    held = [i for i in range(len(garments)) if i % 20 == 0]
    metrics = {}
    for name, enabled in (("base", False), ("lora", True)):
        with lora_enabled(pipe, enabled):
            metrics[f"{name}_wrong_pattern_loss_ratio"] = _wrong_pattern_loss_ratio(
                pipe, latents[held], [garments[i] for i in held])
    print(f"seed {seed}: {metrics}")  # shown with pytest -s; the note quotes these figures
    return metrics


def _wrong_pattern_loss_ratio(pipe, latents: torch.Tensor, garments: list) -> float:
    """Held-out denoising loss at high noise (t in [700, 1000), where the layout is decided) with
    both garments' patterns named wrongly (each shifted to the next pattern), divided by the
    loss with the true captions."""
    from diffusers import DDPMScheduler

    def shifted(pattern: str) -> str:
        return PATTERNS[(PATTERNS.index(pattern) + 1) % len(PATTERNS)]

    wrong = [caption_for(replace(g, upper_pattern=shifted(g.upper_pattern), lower_pattern=shifted(g.lower_pattern)))
             for g in garments]
    captions = [caption_for(g) for g in garments]
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
def test_lora_learns_the_patterns_that_the_pretrained_base_cannot_read(tmp_path):
    """End to end at the 64x96 bucket, a much shorter run than the default. With the patterns
    of held-out captions named wrongly, the base's high-noise loss does not change (it never
    read a pattern word) and the LoRA's rises: the LoRA learned what the base could not
    (measured, seed 42: base 1.002, LoRA 1.108 on 2 Intel Xeon cores; base 0.997, LoRA 1.106 in
    195 s on 2 AMD EPYC cores, 2026-12-06). A shorter run (pretraining 200 VAE and 300 UNet
    steps, training 250) took 128 s there and left the LoRA at 1.013, under the 1.05 asked here,
    so the test keeps this length. The image-side proof (the judge's reading) is the default
    run's metric (README)."""
    m = _pattern_run(tmp_path, seed=42)
    assert abs(m["base_wrong_pattern_loss_ratio"] - 1) < 0.02, m
    assert m["lora_wrong_pattern_loss_ratio"] > 1.05, m

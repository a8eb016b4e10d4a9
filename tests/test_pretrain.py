"""The pretrained tiny base: withheld colour words, VAE quality, and a LoRA that learns the colour."""

import random
from dataclasses import replace

from PIL import Image

from fashion_lora.base import build_tiny
from fashion_lora.evaluation import dominant_color
from fashion_lora.images import resize_crop
from fashion_lora.pretrain import COLOR_WORDS, corpus, psnr, train_vae, withhold
from fashion_lora.synthetic import COLORS, Garments, caption_for, random_garments, render
from tests.conftest import small_params


def test_base_captions_never_hold_a_colour_word():
    x, captions = corpus(60, seed=5, resolution=64)
    assert x.shape == (60, 3, 64, 64) and -1 <= float(x.min()) and float(x.max()) <= 1
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
        img, _ = resize_crop(render(g, (280, 412), "front", rng), 64, "center")
        assert dominant_color(img) == color
    assert dominant_color(Image.new("RGB", (64, 64), (128, 128, 128))) != "red"


def test_pretrained_vae_beats_a_psnr_floor(tmp_path):
    """A short pretraining (a fifth of the default) already reconstructs held-out images."""
    p = replace(small_params().model.pretrain, vae_steps=400)
    pipe = build_tiny(42, tmp_path)
    x, _ = corpus(700, seed=9, resolution=64)
    train_x, held = x[:600], x[600:]
    before = psnr(pipe.vae, held)
    train_vae(pipe.vae, train_x, p, seed=0)
    after = psnr(pipe.vae, held)
    assert after > 17.0 and after > before + 8.0, (before, after)

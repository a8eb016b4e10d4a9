import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image

from fashion_lora.evaluation import val_losses
from fashion_lora.evaluation.drawing import diversity
from fashion_lora.lora import load_pipeline
from fashion_lora.sampling import lora_enabled, sample_image
from fashion_lora.sheets import grid
from fashion_lora.training import train
from tests.helpers import REPO, outputs, train_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base, latent_dir):
    root = tmp_path_factory.mktemp("trained")
    train(train_params(max_steps=10, val_every=5), tiny_base, latent_dir, outputs(root))
    return root / "lora"


def test_generation_is_deterministic_and_lora_changes_it(tiny_base, trained):
    pipe = load_pipeline(tiny_base, trained, torch.device("cpu"))
    args = ("The lady wears a red dress.", "blurry", 3, 12.0, 7, 64, 64)
    a, b = sample_image(pipe, *args), sample_image(pipe, *args)
    assert a.tobytes() == b.tobytes()
    with lora_enabled(pipe, False):
        base = sample_image(pipe, *args)
    assert base.tobytes() != a.tobytes()
    assert sample_image(pipe, *args).tobytes() == a.tobytes()  # LoRA back on after the block


def test_base_and_lora_losses_use_identical_inputs(tiny_base, trained, latent_dir):
    from fashion_lora.latents import load_latents

    pipe = load_pipeline(tiny_base, trained, torch.device("cpu"))
    val = load_latents(latent_dir, "val")
    lat, caps = val.per_item(), [it["caption"] for it in val.items]
    m1, bands = val_losses(pipe, lat, caps, repeats=2, bands=5, batch_size=8, seed=0)
    m2, _ = val_losses(pipe, lat, caps, repeats=2, bands=5, batch_size=8, seed=0)
    assert m1 == m2
    assert set(m1) == {"base", "lora", "improvement", "evaluations"}
    assert set(m1["base"]) == {"mse", "mae", "loss_std"} and m1["base"] != m1["lora"]
    assert len(bands) == 5 and all({"timestep", "base_mse", "lora_mse"} <= set(b) for b in bands)
    # the "base" numbers are those of the adapter-free model on the same plan
    base_only = load_pipeline(tiny_base, None, torch.device("cpu"))
    base_only.enable_lora = base_only.disable_lora = lambda: None
    m3, _ = val_losses(base_only, lat, caps, repeats=2, bands=5, batch_size=8, seed=0)
    assert m3["base"] == pytest.approx(m1["base"], rel=1e-5)


def test_diversity():
    same = [Image.new("RGB", (8, 8), "red")] * 3
    assert diversity(same) == 0.0
    assert diversity([Image.new("RGB", (8, 8), "black"), Image.new("RGB", (8, 8), "white")]) == pytest.approx(1.0)


def test_grid_layout():
    img = Image.new("RGB", (64, 64), "red")
    g = grid([("p1", [("a", img), ("b", img)]), ("p2", [("a", img), ("b", img)])], cell=100)
    assert g.size == (220 + 2 * 100, 24 + 2 * 100)


def test_cli_generates_an_image(tmp_path, tiny_base, trained):
    out = tmp_path / "x.png"
    (tmp_path / "lat").mkdir()
    (tmp_path / "lat/index.json").write_text(json.dumps({"meta": {"train_bucket": [64, 96]}, "shards": [], "items": []}))
    cmd = [sys.executable, "-m", "fashion_lora", "generate", "a red dress", "--steps", "2", "--base", str(tiny_base),
           "--lora", str(trained), "--out", str(out)]
    proc = subprocess.run(cmd + ["--latents", str(tmp_path / "lat")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (64, 96)  # height/width auto: the most common train bucket, a portrait
    nowhere = subprocess.run(cmd + ["--latents", str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True)
    assert nowhere.returncode == 2 and "dvc repro precompute" in nowhere.stderr
    proc = subprocess.run(cmd + ["--latents", str(tmp_path / "none"), "--height", "32", "--width", "48"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (48, 32)
    bad = subprocess.run([sys.executable, "-m", "fashion_lora", "generate", "x", "--base", str(tiny_base),
                          "--lora", str(tmp_path / "nope"), "--out", str(out), "--height", "64", "--width", "64"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "pytorch_lora_weights.safetensors" in bad.stderr
    assert "Traceback" not in bad.stderr
    helptext = subprocess.run([sys.executable, "-m", "fashion_lora", "generate", "--help"], cwd=REPO,
                              capture_output=True, text=True).stdout
    assert "--steps" in helptext and "--lora" in helptext
    for flag in ("--precision", "--fuse", "--cuda-graphs"):  # inference speed options, defaults from params.yaml
        assert flag in helptext


def test_fused_export_matches_adapter(tmp_path, tiny_base, trained):
    from fashion_lora.export import export_fused

    export_fused(tiny_base, trained, tmp_path / "fused")
    fused = load_pipeline(tmp_path / "fused", None, torch.device("cpu"))
    adapter = load_pipeline(tiny_base, trained, torch.device("cpu"))
    x, t, encoder_hidden_states = torch.randn(1, 4, 8, 8), torch.tensor([300]), torch.randn(1, 77, 64)
    with torch.no_grad():
        want = adapter.unet(x, t, encoder_hidden_states).sample
        assert (fused.unet(x, t, encoder_hidden_states).sample - want).abs().max() < 1e-4
    assert not any("lora" in k for k in fused.unet.state_dict())


def test_clip_score_with_a_local_model_and_clear_errors(tmp_path):
    """CLIP score is off by default (None), names the param when the folder is wrong, and runs
    with a local CLIP folder (a tiny random one here: the score's value means nothing)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from fashion_lora.errors import UserError
    from fashion_lora.evaluation.scoring import clip_score
    from fashion_lora.tiny import build_clip_tokenizer

    img = [Image.new("RGB", (64, 64), "red")]
    assert clip_score(None, img, ["a red dress"]) is None
    with pytest.raises(UserError, match="evaluate.clip_model"):
        clip_score(str(tmp_path / "missing"), img, ["a red dress"])
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, vocab_size=49408, eos_token_id=49407),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8),
                     projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}),
                         tokenizer=build_clip_tokenizer(tmp_path / "tok"))
    proc.save_pretrained(tmp_path / "clip")
    score = clip_score(str(tmp_path / "clip"), img * 2, ["a red dress", "a blue shirt"])
    assert isinstance(score, float) and -100 <= score <= 100


def test_fused_lora_draws_what_the_adapter_draws_and_base_images_stay_exact(tmp_path, tiny_base, trained):
    """`generate.fuse_lora`: the LoRA images of a fused UNet agree with the unfused adapter's
    within rounding; the base images, drawn before any fusing, are exactly the unfused base's."""
    import numpy as np

    from fashion_lora.params import load_params
    from fashion_lora.sampling import sample_prompt_grid

    gen = replace(load_params().generate, prompts=["The lady wears a red dress."], steps=[3], fuse_lora=True)
    pipe = load_pipeline(tiny_base, trained, torch.device("cpu"))
    images, _ = sample_prompt_grid(pipe, gen, (64, 64), tmp_path)
    fresh = load_pipeline(tiny_base, trained, torch.device("cpu"))
    args = (gen.prompts[0], gen.negative_prompt, 3, gen.guidance_scale, gen.seed, 64, 64)
    with lora_enabled(fresh, False):
        assert images[0, 3, "base"].tobytes() == sample_image(fresh, *args).tobytes()
    unfused = np.asarray(sample_image(fresh, *args), dtype=np.int16)
    fused = np.asarray(images[0, 3, "lora"], dtype=np.int16)
    assert np.abs(fused - unfused).max() <= 2 and fused.tobytes() != images[0, 3, "base"].tobytes()
    with torch.no_grad():  # and the UNet itself, before the uint8 rounding
        x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([400]), torch.randn(1, 77, 64)
        want = fresh.unet(x, t, e).sample
        with lora_enabled(fresh, True, fuse=True):
            assert not any(m.merged is False for m in fresh.unet.modules() if hasattr(m, "merged_adapters"))
            got = fresh.unet(x, t, e).sample
        assert (got - want).abs().max() < 1e-4
        assert (fresh.unet(x, t, e).sample - want).abs().max() < 1e-4  # unfused again on leaving


def test_cuda_graph_wrapper_leaves_cpu_sampling_unchanged(tiny_base, trained):
    """`use_cuda_graphs` replays graphs on CUDA only; elsewhere (and for calls it does not
    cover) the pipeline's UNet call goes through unchanged: same image bytes."""
    from fashion_lora.sampling import use_cuda_graphs

    pipe = load_pipeline(tiny_base, trained, torch.device("cpu"))
    args = ("The lady wears a red dress.", "", 3, 3.0, 5, 64, 64)
    before = sample_image(pipe, *args).tobytes()
    use_cuda_graphs(pipe.unet)
    assert sample_image(pipe, *args).tobytes() == before and pipe.unet._cuda_graphs == {}

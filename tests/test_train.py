import json
import logging
import math
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from fashion_lora import diffusion
from fashion_lora.base import load_base
from fashion_lora.errors import UserError
from fashion_lora.latents import LatentGroups
from fashion_lora.lora import (
    ADAPTER_KEY,
    LORA_WEIGHTS,
    attach_lora,
    keep_lora_fp32,
    load_pipeline,
    lora_state,
    save_lora,
    token_window,
)
from fashion_lora.lr_schedule import lr_factor
from fashion_lora.training import train
from fashion_lora.training.data import latent_augment
from fashion_lora.training.state import EarlyStop
from fashion_lora.val_loss import biased_timesteps, fixed_eval
from tests.helpers import CAPTIONS, Crash, crash_at, outputs, small_params, train_params


def test_only_lora_params_change(tiny_base):
    p = train_params()
    base = load_base(tiny_base, torch.device("cpu"))
    unet = base.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    attach_lora(unet, p.train.lora)
    params = [q for q in unet.parameters() if q.requires_grad]
    assert params and all("lora_" in n for n, q in unet.named_parameters() if q.requires_grad)
    opt = torch.optim.AdamW(params, lr=1e-2)
    lat = torch.randn(2, 4, 8, 8)
    noise, t = torch.randn_like(lat), torch.tensor([10, 900])
    encoder_hidden_states = torch.randn(2, 77, 64)
    for _ in range(2):  # two steps: lora_B starts at 0, so lora_A only moves from the second
        loss = diffusion.training_loss(unet, base.noise_scheduler, lat, noise, t, encoder_hidden_states, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = unet.state_dict()
    changed = {k for k in after if "lora_" in k and not torch.equal(after[k], torch.zeros_like(after[k]))}
    assert changed
    for k, v in before.items():
        key = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], v), f"base weight {k} changed"


def test_loss_decreases_on_fixed_batch(tiny_base):
    p = train_params()
    base = load_base(tiny_base, torch.device("cpu"))
    attach_lora(base.unet, replace(p.train.lora, dropout=0.0))
    params = [q for q in base.unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    lat, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([100, 300, 500, 700])
    encoder_hidden_states = torch.randn(4, 77, 64, generator=g)
    losses = []
    for _ in range(50):
        loss = diffusion.training_loss(base.unet, base.noise_scheduler, lat, noise, t, encoder_hidden_states, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_saved_adapter_reloads_exactly_with_alpha_folded_into_lora_b(tmp_path, tiny_base):
    p = train_params(lora={"rank": 4, "alpha": 12.0, "dropout": 0.1})
    base = load_base(tiny_base, torch.device("cpu"))
    cfg = attach_lora(base.unet, p.train.lora)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, q in base.unet.named_parameters():
            if q.requires_grad:
                q.add_(0.05 * torch.randn(q.shape, generator=g))
    base.unet.eval()
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 600])
    encoder_hidden_states = torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        ref = base.unet(x, t, encoder_hidden_states).sample
    save_lora(tmp_path, {"unet": lora_state(base.unet)}, {"unet": cfg}, 154)
    assert token_window(tmp_path / LORA_WEIGHTS) == 154  # the caption window it was trained with
    pipe = load_pipeline(tiny_base, tmp_path, torch.device("cpu"))
    assert not pipe.unet.training
    with torch.no_grad():
        out = pipe.unet(x, t, encoder_hidden_states).sample
    assert (out - ref).abs().max().item() < 1e-5
    trained = {k.rsplit(".lora_", 1)[0] for k in lora_state(base.unet)}
    loaded = {n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "fashion" in m.lora_A}
    assert trained == loaded and len(trained) == 92
    # alpha / rank = 3 is folded into the file's lora_B (diffusers 0.32 reads no alpha), so the
    # loaded scaling is 1 and the trained rank and alpha are recorded beside
    scaling = {m.scaling["fashion"] for _, m in pipe.unet.named_modules() if hasattr(m, "scaling") and m.scaling}
    assert scaling == {1.0}
    with safe_open(str(tmp_path / LORA_WEIGHTS), "pt") as f:
        meta = f.metadata()
        saved = {k.removeprefix("unet."): f.get_tensor(k) for k in f.keys()}
    state = lora_state(base.unet)
    assert all(torch.equal(saved[k], v * 3.0 if ".lora_B." in k else v) for k, v in state.items())
    assert json.loads(meta["fashion_lora_adapter"]) == {"unet": {"rank": 4, "alpha": 12.0, "scale_in_lora_B": True}}
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == 4.0


def test_kohya_export_round_trips_through_diffusers(tmp_path, tiny_base, latent_dir):
    # the UNet's LoRA alone (the text encoder's part: tests/test_text_encoder_lora.py)
    p = train_params(max_steps=6, val_every=3, lora={"rank": 4, "alpha": 8.0}, text_encoder_lora={"enabled": False})
    train(p, tiny_base, latent_dir, outputs(tmp_path))
    x, t, encoder_hidden_states = torch.randn(2, 4, 8, 8), torch.tensor([5, 600]), torch.randn(2, 77, 64)
    native = load_pipeline(tiny_base, tmp_path / "lora", torch.device("cpu"))
    kohya = load_pipeline(tiny_base, None, torch.device("cpu"))
    kohya.load_lora_weights(str(tmp_path / "lora"), weight_name="fashion_lora_kohya.safetensors")
    kohya.unet.eval()
    with torch.no_grad():
        a, b = native.unet(x, t, encoder_hidden_states).sample, kohya.unet(x, t, encoder_hidden_states).sample
        plain = load_pipeline(tiny_base, None, torch.device("cpu")).unet(x, t, encoder_hidden_states).sample
    assert (a - b).abs().max().item() < 1e-5
    assert (a - plain).abs().max().item() > 1e-4  # the adapter does something
    with safe_open(str(tmp_path / "lora/fashion_lora_kohya.safetensors"), "pt") as f:
        keys = list(f.keys())
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
        meta = f.metadata()
    assert all(k.startswith("lora_unet_") for k in keys) and alphas == {4.0}  # alpha 8 / rank 4 is in lora_up
    assert json.loads(meta["fashion_lora_adapter"])["unet"] == {"rank": 4, "alpha": 8.0, "scale_in_lora_B": True}
    # the token window in kohya's terms (75 tokens a window), read back as ours
    assert meta["ss_max_token_length"] == "75"
    assert token_window(tmp_path / "lora/fashion_lora_kohya.safetensors") == 77


def test_missing_or_corrupt_lora_is_a_clear_error(tmp_path, tiny_base):
    with pytest.raises(UserError, match="pytorch_lora_weights.safetensors"):
        load_pipeline(tiny_base, tmp_path, torch.device("cpu"))
    (tmp_path / LORA_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_pipeline(tiny_base, tmp_path, torch.device("cpu"))


def test_min_snr_weights_match_formula():
    alphas = torch.tensor([0.5, 0.9, 0.01])
    s = diffusion.snr(alphas, torch.tensor([0, 1, 2]))
    assert torch.allclose(s, torch.tensor([1.0, 9.0, 0.01 / 0.99]))
    w = diffusion.min_snr_weights(s, 5.0, "epsilon")
    assert torch.allclose(w, torch.tensor([1.0, 5.0 / 9.0, 1.0]))
    v = diffusion.min_snr_weights(s, 5.0, "v_prediction")
    assert torch.allclose(v, torch.tensor([0.5, 0.5, (0.01 / 0.99) / (0.01 / 0.99 + 1)]))


def test_lr_schedule_matches_torch_warm_restarts():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2, eta_min=0.1)
    warm = 5
    assert lr_factor(0, warm, 10, 2, 0.1) == pytest.approx(1 / 5)
    for s in range(70):
        assert lr_factor(warm + s, warm, 10, 2, 0.1) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), s
        opt.step()
        ref.step()


def test_early_stopping_rule():
    es = EarlyStop(patience=2, min_delta=0.1)
    assert es.update(1.0, 0) and not es.stop
    assert not es.update(0.95, 1)  # not better by more than min_delta
    assert not es.stop
    assert not es.update(0.99, 2) and es.stop


def test_train_stops_early_on_flat_val(tmp_path, tiny_base, latent_dir):
    p = train_params(max_steps=40, val_every=2, early_stopping=replace(small_params().train.early_stopping,
                                                                  patience=2, min_delta=10.0))
    report = train(p, tiny_base, latent_dir, outputs(tmp_path))
    # step 0 (the base) is the reference, not a candidate: step 2 is the first best, 4 and 6 miss by min_delta
    assert report["stop_reason"] == "early_stopping" and report["steps"] == 6 and report["best_step"] == 2
    # the saved best adapter is step 2's (trained), not the last weights (step 6) and never the B = 0 base
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "lora" / LORA_WEIGHTS))
    last = load_file(str(tmp_path / "lora/last" / LORA_WEIGHTS))
    assert any(v.any() for k, v in best.items() if "lora_B" in k)
    assert any(not torch.equal(v, last[k]) for k, v in best.items() if "lora_B" in k)


def test_a_run_that_never_beats_the_base_says_so_and_saves_its_best_trained_step(tmp_path, tiny_base, latent_dir,
                                                                                  monkeypatch, caplog):
    """Validation that gets worse from the base on (a stand-in for a run that only hurts): the
    adapter saved is the best trained step, never the untouched base, and the run says so."""
    import logging

    from safetensors.torch import load_file

    from fashion_lora.training import validation

    real = validation.validate
    calls = []

    def worse(model, data, batch_size, desc=None):
        metrics = real(model, data, batch_size, desc)
        calls.append(metrics["mse"])
        return {**metrics, "mse": 1.0 + 0.1 * (len(calls) - 1) ** 0.5}  # the base 1.0, then 1.1, 1.14, ...

    monkeypatch.setattr(validation, "validate", worse)
    with caplog.at_level(logging.WARNING):
        report = train(train_params(max_steps=6, val_every=2), tiny_base, latent_dir, outputs(tmp_path))
    assert report["improved"] is False and report["best_step"] == 2 and report["base_val"]["mse"] == 1.0
    assert "no validation beat the base model" in caplog.text
    saved = load_file(str(tmp_path / "lora" / LORA_WEIGHTS))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())  # trained, not B = 0


def test_resume_equals_uninterrupted_run(tmp_path, tiny_base, latent_dir):
    p = train_params(max_steps=12, val_every=4, checkpoint_every=4)
    train(p, tiny_base, latent_dir, outputs(tmp_path / "full"))

    with pytest.raises(Crash):
        train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"), on_validation=crash_at(8))
    assert not (tmp_path / "cut/lora").exists()
    report = train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"))
    assert report["resumed_from_step"] == 4
    for rel in (LORA_WEIGHTS, f"last/{LORA_WEIGHTS}", "fashion_lora_kohya.safetensors"):
        assert (tmp_path / "full/lora" / rel).read_bytes() == (tmp_path / "cut/lora" / rel).read_bytes(), rel
    assert (tmp_path / "full/ckpt/checkpoint.pt").read_bytes() == (tmp_path / "cut/ckpt/checkpoint.pt").read_bytes()
    full = (tmp_path / "full/live/plots/metrics/train/loss.tsv").read_text()
    assert (tmp_path / "cut/live/plots/metrics/train/loss.tsv").read_text() == full  # no duplicated steps


def test_training_takes_the_stored_mirrored_latents(tmp_path, tiny_base):
    """Train reads `flipped` from the shards: mirrored latents equal to the flipped ones give the
    very adapter of a run without them, other ones another adapter."""
    from fashion_lora.latents import ShardWriter

    gen = torch.Generator().manual_seed(0)
    lat = [torch.randn(4, 8, 8, generator=gen) for _ in range(20)]
    adapters = {}
    for name, shift in (("none", None), ("same", 0.0), ("other", 0.5)):
        w = ShardWriter(tmp_path / name, 16, torch.float32)
        for i, x in enumerate(lat):
            w.add(x, {"image_name": f"{i}.jpg", "caption": CAPTIONS[i % 3], "split": "val" if i % 5 == 0 else "train"},
                  None if shift is None else x.flip(-1) + shift)
        w.close({"resolution": 64, **({} if shift is None else {"flipped": True})})
        p = train_params(max_steps=4, val_every=2, checkpoint_every=4)
        train(p, tiny_base, tmp_path / name, outputs(tmp_path / f"run_{name}"))
        adapters[name] = (tmp_path / f"run_{name}/lora" / LORA_WEIGHTS).read_bytes()
    assert adapters["same"] == adapters["none"] and adapters["other"] != adapters["none"]


def test_checkpoint_from_other_params_is_not_reused(tmp_path, tiny_base, latent_dir, caplog):
    p = train_params(max_steps=4, val_every=2, checkpoint_every=2)
    train(p, tiny_base, latent_dir, outputs(tmp_path))
    p2 = train_params(max_steps=4, val_every=2, checkpoint_every=2, learning_rate=1e-3)
    with caplog.at_level(logging.WARNING):
        report = train(p2, tiny_base, latent_dir, outputs(tmp_path))
    assert report["resumed_from_step"] is None
    assert "not resuming" in caplog.text and "train.learning_rate 0.005 -> 0.001" in caplog.text
    # a fresh (not resumed) run starts its dvclive curves anew, even in a kept folder
    assert len((tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()) == 1 + 4


def test_train_report_and_val_beats_base(tmp_path, tiny_base, latent_dir):
    p = train_params(max_steps=30, val_every=10)
    report = train(p, tiny_base, latent_dir, outputs(tmp_path))
    assert report["best_val"]["mse"] < report["base_val"]["mse"] and report["improved"] is True and report["best_step"] > 0
    assert report["trainable_params"] > 0 and report["lora_modules"] == 92 + 8  # UNet + text encoder (default)
    assert report["text_encoder_lora_modules"] == 8
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["steps"] == 30
    assert len((tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()) == 31


def test_bf16_base_keeps_lora_fp32(tiny_base):
    """The mixed-precision dtype rule, checked on CPU with bf16: base half, LoRA fp32, step works."""
    p = train_params()
    base = load_base(tiny_base, torch.device("cpu"), dtype=torch.bfloat16)
    attach_lora(base.unet, p.train.lora)
    keep_lora_fp32(base.unet)
    for n, q in base.unet.named_parameters():
        assert q.dtype == (torch.float32 if q.requires_grad else torch.bfloat16), n
    lat = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion.training_loss(base.unet, base.noise_scheduler, lat, torch.randn_like(lat),
                                       torch.tensor([1, 500]), torch.randn(2, 77, 64, dtype=torch.bfloat16), 5.0)
    loss.backward()
    grads = [q.grad for q in base.unet.parameters() if q.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_fails_fast(tmp_path, tiny_base, latent_dir):
    with pytest.raises(UserError, match="train.device is 'cuda'"):
        train(train_params(device="cuda"), tiny_base, latent_dir, outputs(tmp_path))
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        train(train_params(device="cpu", mixed_precision="fp16"), tiny_base, latent_dir, outputs(tmp_path))


def test_latent_augment_is_seeded_and_shape_preserving():
    lat = torch.randn(6, 4, 8, 8)
    a = latent_augment(lat, torch.Generator().manual_seed(3), 0.5, 0.1, 0.5, 0.5, 0.7)
    b = latent_augment(lat, torch.Generator().manual_seed(3), 0.5, 0.1, 0.5, 0.5, 0.7)
    assert torch.equal(a, b) and a.shape == lat.shape
    flipped = latent_augment(lat, torch.Generator().manual_seed(3), 0, 0, 1.0, 0, 1.0)
    assert torch.equal(flipped, lat.flip(-1))


def test_flips_take_the_latents_of_the_mirrored_images_where_given():
    """`precompute.flipped`: a flipped sample is the stored latent of its mirrored image, the
    others are untouched, and the seeded choice of which to flip is the same either way."""
    lat, mirrored = torch.randn(8, 4, 8, 8), torch.randn(8, 4, 8, 8)
    plain = latent_augment(lat, torch.Generator().manual_seed(5), 0, 0, 0.5, 0, 1.0)
    taken = latent_augment(lat, torch.Generator().manual_seed(5), 0, 0, 0.5, 0, 1.0, mirrored)
    flips = [not torch.equal(plain[i], lat[i]) for i in range(8)]
    assert 0 < sum(flips) < 8
    for i, flipped in enumerate(flips):
        assert torch.equal(taken[i], mirrored[i] if flipped else lat[i])
        assert torch.equal(plain[i], lat[i].flip(-1) if flipped else lat[i])


def test_fixed_eval_plan_is_stratified_and_seeded():
    a = fixed_eval([(4, 8, 8)] * 10, 10, 1000, seed=1)
    b = fixed_eval([(4, 8, 8)] * 10, 10, 1000, seed=1)
    assert torch.equal(torch.stack(a.noise), torch.stack(b.noise)) and torch.equal(a.timesteps, b.timesteps)
    counts = torch.bincount(a.timesteps // 100, minlength=10)
    assert (counts == 10).all()  # every band of [0, T) gets its share
    assert math.isclose(float(a.timesteps.float().mean()), 500, abs_tol=30)


def test_timestep_bias_shifts_draws_to_high_noise():
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    uniform, biased = biased_timesteps(u, 1000, 1.0), biased_timesteps(u, 1000, 3.0)
    assert uniform.dtype == torch.int64 and int(uniform.min()) >= 0 and int(biased.max()) <= 999
    assert math.isclose(float(uniform.float().mean()), 499.5, abs_tol=10)
    assert math.isclose(float(biased.float().mean()), 749.5, abs_tol=10)  # E[u^(1/3)] = 3/4
    assert (biased >= uniform).all()  # the same draw only moves towards noise
    plan = fixed_eval([(4, 8, 8)] * 10, 10, 1000, seed=1, bias=3.0)
    assert math.isclose(float(plan.timesteps.float().mean()), 750, abs_tol=30)
    assert torch.equal(torch.stack(plan.noise), torch.stack(fixed_eval([(4, 8, 8)] * 10, 10, 1000, seed=1).noise))


def test_samples_while_training_are_logged_per_step(tmp_path, tiny_base, latent_dir):
    base_p = small_params()
    p = train_params(max_steps=4, val_every=2, samples=replace(base_p.train.samples, every=1, steps=2))
    train(p, tiny_base, latent_dir, outputs(tmp_path))
    names = sorted(f.name for f in (tmp_path / "live/plots/images/samples").glob("*.png"))
    assert names == ["step_000000.png", "step_000002.png", "step_000004.png"]


def test_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_base):
    p = train_params()
    out = []
    for ckpt in (False, True):
        base = load_base(tiny_base, torch.device("cpu"))
        torch.manual_seed(0)
        attach_lora(base.unet, replace(p.train.lora, dropout=0.0))
        if ckpt:
            base.unet.enable_gradient_checkpointing()
        base.unet.train()
        g = torch.Generator().manual_seed(0)
        lat = torch.randn(2, 4, 8, 8, generator=g)
        loss = diffusion.training_loss(base.unet, base.noise_scheduler, lat, torch.randn(lat.shape, generator=g),
                                       torch.tensor([10, 700]), torch.randn(2, 77, 64, generator=g), None)
        loss.backward()
        out.append((loss.item(), [q.grad.clone() for q in base.unet.parameters() if q.requires_grad]))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out[0][1], out[1][1]))


def test_adamw8bit_without_bitsandbytes_is_a_clear_error(tmp_path, tiny_base, latent_dir):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.fail("bitsandbytes is installed here; this test checks the error when it is missing")
    with pytest.raises(UserError, match="bitsandbytes"):
        train(train_params(optimizer="adamw8bit"), tiny_base, latent_dir, outputs(tmp_path))


def test_batches_rows_and_cached_text_embeddings(tiny_base):
    from fashion_lora.training.data import LatentBatches, TextEmbeddings

    p = train_params()
    p = replace(p, train=replace(p.train, captions=replace(p.train.captions, dropout_prob=0.3, quality_prob=0.3)))
    base = load_base(tiny_base, torch.device("cpu"))
    caps = [CAPTIONS[i % 3] for i in range(10)]
    b = LatentBatches(LatentGroups([torch.randn(10, 4, 8, 8)], [{}] * 10), caps, base.tokenizer, p.train, seed=0)
    assert b.token_ids.shape == (10 * (1 + len(p.train.captions.quality_terms)) + 1, 77)
    rows = torch.cat([b.batch(s)[1] for s in range(30)])
    assert (rows == b.empty_row).any() and (rows >= 10).any() and (rows < 10).any()  # all three variants occur
    assert torch.equal(b.batch(7)[0], b.batch(7)[0]) and torch.equal(b.batch(7)[1], b.batch(7)[1])
    cached = TextEmbeddings(base.text_encoder, b.token_ids, torch.device("cpu"))
    fresh = TextEmbeddings(base.text_encoder, b.token_ids, torch.device("cpu"), limit_bytes=0)
    assert cached.table is not None and fresh.table is None
    assert len(cached.table) == 3 * (1 + len(p.train.captions.quality_terms)) + 1  # distinct captions only
    assert torch.allclose(cached(rows[:8]), fresh(rows[:8]), atol=1e-6)


def test_bf16_mixed_precision_training_runs_end_to_end(tmp_path, tiny_base, latent_dir):
    """The mixed-precision code path (half base, fp32 LoRA, autocast in train and validation),
    exercised on CPU with bf16 since fp16 needs a GPU; the text encoder's LoRA (a half encoder
    run under autocast every step) too."""
    report = train(train_params(device="cpu", mixed_precision="bf16", max_steps=6, val_every=3,
                                text_encoder_lora={"enabled": True}), tiny_base, latent_dir, outputs(tmp_path))
    assert report["system"]["mixed_precision"] == "bf16" and report["text_encoder_lora_modules"] == 8
    assert all(math.isfinite(h["mse"]) for h in report["val_history"])
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "lora" / LORA_WEIGHTS))
    assert {v.dtype for v in weights.values()} == {torch.float32}


def test_rerun_of_a_finished_run_rewrites_identical_files(tmp_path, tiny_base, latent_dir, caplog):
    """`dvc repro -f train` (or a restored workspace) after a completed run: no step is trained,
    and adapter, curves and report come back byte-identical (the dvclive step does not drift)."""
    p = train_params(max_steps=6, val_every=3, checkpoint_every=3)
    out = outputs(tmp_path)
    report = train(p, tiny_base, latent_dir, out)
    files = {f: f.read_bytes() for f in sorted((tmp_path / "lora").rglob("*")) + sorted((tmp_path / "live").rglob("*"))
             if f.is_file()}
    import shutil
    shutil.rmtree(tmp_path / "lora")  # DVC deletes a stage's outs before running it
    shutil.rmtree(tmp_path / "live")
    with caplog.at_level(logging.INFO):
        again = train(p, tiny_base, latent_dir, out)
    assert "writing its adapter and reports again instead of training" in caplog.text
    assert again == report and again["steps_per_second"] is not None
    for f, data in files.items():
        assert f.read_bytes() == data, f


def test_resume_restores_its_own_curves_over_a_stale_live_folder(tmp_path, tiny_base, latent_dir):
    """Before `dvc exp run` resumes, DVC may have put another run's dvclive files in place: the
    resumed run's curves come from its checkpoint, so they equal an uninterrupted run's."""
    p = train_params(max_steps=8, val_every=4, checkpoint_every=4)
    train(p, tiny_base, latent_dir, outputs(tmp_path / "full"))

    def ctrl_c_at_8(step, metrics):
        if step == 8:
            raise KeyboardInterrupt

    from fashion_lora.errors import Interrupted

    with pytest.raises(Interrupted, match=r"stopped at step 8 of 8; last checkpoint at step 4 "):
        train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"), on_validation=ctrl_c_at_8)
    stale = tmp_path / "cut/live/plots/metrics/train/loss.tsv"
    stale.write_text("step\tloss\n1\t9.9\n2\t9.9\n3\t9.9\n4\t9.9\n5\t9.9\n6\t9.9\n7\t9.9\n8\t9.9\n9\t9.9\n")
    train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"))
    for rel in ("plots/metrics/train/loss.tsv", "plots/metrics/val/mse.tsv", "metrics.json"):
        assert (tmp_path / "cut/live" / rel).read_text() == (tmp_path / "full/live" / rel).read_text(), rel


def test_checkpoint_refusal_names_what_changed():
    from fashion_lora.training.checkpoint import mismatch

    def params(rank: int = 12, batch_size: int = 16) -> str:
        return json.dumps({"seed": 42, "train": {"max_steps": 300, "batch_size": batch_size, "lora": {"rank": rank}}})

    saved = {"params": params(), "processes": "1", "latents": "a", "base": "b", "code": "c",
             "buckets": json.dumps({"shape": "buckets", "resolution": 64})}
    same = dict(saved)
    assert mismatch(saved, same) == []
    other = {**saved, "params": params(rank=4), "processes": "2", "code": "d"}
    reasons = mismatch(saved, other)
    assert reasons[0] == "params changed (train.lora.rank 12 -> 4)"
    assert "process count 1 -> 2 with the global batch 16 -> 32" in reasons
    assert any("training code changed" in r for r in reasons)
    # another process count at the same global batch continues the run; the batch size alone is a change
    assert mismatch(saved, {**saved, "params": params(batch_size=8), "processes": "2"}) == []
    assert mismatch(saved, {**saved, "params": params(batch_size=8)}) == ["params changed (train.batch_size 16 -> 8)"]
    assert mismatch(saved, {**saved, "latents": "x"}) == ["latents (data/latents) changed"]
    squares = {**saved, "latents": "x", "buckets": json.dumps({"shape": "square", "resolution": 64})}
    assert mismatch(saved, squares) == ["bucket settings of the latents changed (shape 'buckets' -> 'square')",
                                        "latents (data/latents) changed"]


def test_reading_the_loss_every_n_steps_logs_the_same_curves(tmp_path, tiny_base, latent_dir):
    """`sync_every` only changes when the host reads the losses: every step is logged with the
    same values, and the adapter is the same, whatever N (here 1 vs 7, not dividing 12)."""
    runs = {}
    for n in (1, 7):
        p = train_params(max_steps=12, val_every=5, checkpoint_every=4, sync_every=n)
        train(p, tiny_base, latent_dir, outputs(tmp_path / str(n)))
        runs[n] = tmp_path / str(n)
    for rel in ("live/plots/metrics/train/loss.tsv", "live/plots/metrics/train/grad_norm.tsv",
                "live/plots/metrics/train/lr.tsv", f"lora/{LORA_WEIGHTS}"):
        assert (runs[1] / rel).read_bytes() == (runs[7] / rel).read_bytes(), rel
    assert len((runs[7] / "live/plots/metrics/train/loss.tsv").read_text().splitlines()) == 1 + 12


def test_non_finite_loss_names_its_step_between_reads(tmp_path, tiny_base, latent_dir, monkeypatch):
    """The loss is read every `sync_every` steps, but a NaN still stops the run naming the step it
    appeared at, with the fix."""
    real, calls = diffusion.training_loss, []

    def nan_at_third(*args, **kw):
        calls.append(1)
        loss = real(*args, **kw)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(diffusion, "training_loss", nan_at_third)
    with pytest.raises(UserError, match=r"loss became nan at step 3; lower train\.learning_rate"):
        train(train_params(max_steps=10, val_every=10, sync_every=10), tiny_base, latent_dir, outputs(tmp_path))


@pytest.mark.slow
def test_regional_compile_gives_the_same_loss_and_grads(tiny_base):
    """`train.compile: regional` compiles the repeated blocks in place (peft's LoRA layers traced
    inside): same loss and LoRA gradients as eager. The `aot_eager` backend checks the capture
    without minutes of C++ compilation on a CPU; the GPU benchmark runs inductor."""
    from fashion_lora.training.setup import COMPILE_REGIONS, compile_unet

    def loss_and_grads(mode):
        base = load_base(tiny_base, torch.device("cpu"), with_vae=False)
        torch.manual_seed(0)
        attach_lora(base.unet, small_params().train.lora)
        unet = compile_unet(base.unet, mode, backend="aot_eager")
        unet.train()
        g = torch.Generator().manual_seed(0)
        lat, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        loss = diffusion.training_loss(unet, base.noise_scheduler, lat, noise, torch.tensor([10, 700]),
                                       torch.randn(2, 77, 64, generator=g), None)
        loss.backward()
        compiled = [m for m in base.unet.modules() if type(m).__name__ in COMPILE_REGIONS]
        return loss, [q.grad for q in base.unet.parameters() if q.requires_grad], compiled

    eager_loss, eager_grads, _ = loss_and_grads("none")
    loss, grads, blocks = loss_and_grads("regional")
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert torch.allclose(loss, eager_loss, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, eager_grads))


def test_ema_update_rule_and_swap_on_a_toy_parameter():
    """shadow <- d * shadow + (1 - d) * w, with d ramping as (1 + s) / (10 + s) up to `decay`;
    `applied()` shows the average inside the block and restores the trained weights after it."""
    from fashion_lora.training.ema import LoraEMA

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = LoraEMA([w], decay=0.9, warmup=True)
    assert [round(ema.decay_at(s), 4) for s in (0, 1, 8, 100)] == [0.1, 0.1818, 0.5, 0.9]
    expected = w.detach().clone()
    for step, value in enumerate((3.0, 5.0, -1.0)):
        with torch.no_grad():
            w.fill_(value)
        ema.update(step)
        d = ema.decay_at(step)
        expected = d * expected + (1 - d) * torch.full((2,), value)
        assert torch.allclose(ema.shadow[0], expected)
    with ema.applied():
        assert torch.equal(w.detach(), ema.shadow[0])
    assert torch.equal(w.detach(), torch.full((2,), -1.0))
    assert LoraEMA([w], decay=0.9, warmup=False).decay_at(0) == 0.9


def test_ema_resume_is_bit_exact_and_the_average_is_what_is_saved(tmp_path, tiny_base, latent_dir):
    from safetensors.torch import load_file

    p = train_params(max_steps=12, val_every=4, checkpoint_every=4)
    p = replace(p, train=replace(p.train, ema=replace(p.train.ema, enabled=True, decay=0.9)))
    report = train(p, tiny_base, latent_dir, outputs(tmp_path / "full"))
    assert report["weights"] == "moving average (decay 0.9)"

    with pytest.raises(Crash):
        train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"), on_validation=crash_at(8))
    assert train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"))["resumed_from_step"] == 4
    for rel in (LORA_WEIGHTS, f"last/{LORA_WEIGHTS}"):
        assert (tmp_path / "full/lora" / rel).read_bytes() == (tmp_path / "cut/lora" / rel).read_bytes(), rel
    ckpt = torch.load(tmp_path / "full/ckpt/checkpoint.pt", weights_only=True)
    file = tmp_path / f"full/lora/last/{LORA_WEIGHTS}"
    with safe_open(str(file), "pt") as f:
        trained_as = json.loads(f.metadata()[ADAPTER_KEY])  # the file's lora_B hold alpha / rank: undone here
    last = [v / (trained_as[k.split(".")[0]]["alpha"] / trained_as[k.split(".")[0]]["rank"]) if ".lora_B." in k else v
            for k, v in load_file(file).items()]
    shadow, trained = ckpt["ema"]["shadow"], list(ckpt["lora"]["unet"].values())
    assert len(last) == len(shadow) and sorted(float(t.sum()) for t in last) == sorted(float(t.sum()) for t in shadow)
    assert sorted(float(t.sum()) for t in last) != sorted(float(t.sum()) for t in trained)


def test_dora_adapter_reloads_fuses_and_refuses_kohya(tmp_path, tiny_base, latent_dir):
    """`train.lora.use_dora`: the saved file (with its magnitude vectors) reloads through
    `load_lora_weights` to the trained UNet's output, the fused export matches it, and the
    kohya export (which cannot hold magnitudes) is refused with the way out."""
    from fashion_lora.export import export_fused, export_kohya

    p = train_params(max_steps=4, val_every=4, lora={"use_dora": True})
    train(p, tiny_base, latent_dir, outputs(tmp_path))
    lora = tmp_path / "lora"
    assert not (lora / "fashion_lora_kohya.safetensors").exists()
    base = load_base(tiny_base, torch.device("cpu"), with_vae=False)
    torch.manual_seed(0)
    attach_lora(base.unet, replace(p.train.lora, alpha=float(p.train.lora.rank)))  # the file holds alpha / rank in lora_B
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = {k.removeprefix("unet."): v for k, v in load_file(lora / LORA_WEIGHTS).items()}
    assert any("lora_magnitude_vector" in k for k in state)
    set_peft_model_state_dict(base.unet, state)
    base.unet.eval()
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([300]), torch.randn(1, 77, 64)
    with torch.no_grad():
        want = base.unet(x, t, e).sample
        assert (load_pipeline(tiny_base, lora, torch.device("cpu")).unet(x, t, e).sample - want).abs().max() < 1e-5
        export_fused(tiny_base, lora, tmp_path / "fused")
        assert (load_pipeline(tmp_path / "fused", None, torch.device("cpu")).unet(x, t, e).sample - want).abs().max() < 1e-4
    with pytest.raises(UserError, match="DoRA.*kohya.*export fused"):
        export_kohya(lora, tmp_path / "k.safetensors")

"""train.text_encoder_lora: LoRA on the CLIP text encoder beside the UNet's, trained, validated,
checkpointed, saved (diffusers and kohya layouts) and fused together."""

import json

import pytest
import torch
from safetensors import safe_open

from fashion_lora import diffusion
from fashion_lora.base import load_base
from fashion_lora.errors import UserError
from fashion_lora.evaluation import val_losses
from fashion_lora.export import export_fused
from fashion_lora.latents import load_latents
from fashion_lora.lora import KOHYA_WEIGHTS, LORA_WEIGHTS, attach_lora, load_pipeline, lora_components
from fashion_lora.training import train
from fashion_lora.training.checkpoint import fingerprint
from fashion_lora.training.data import setup_data
from fashion_lora.training.loop import training_loop
from fashion_lora.training.report import save_adapters
from fashion_lora.training.setup import make_accelerator, setup_model
from fashion_lora.training.state import EarlyStop, Run, RunState
from fashion_lora.val_loss import eval_losses, summarize
from tests.helpers import CAPTIONS, Crash, crash_at, outputs, train_params

CPU = torch.device("cpu")
TE = {"enabled": True, "rank": 4, "alpha": 6.0}  # alpha != rank: the exports must keep the true scale


def _embed(pipe_or_encoder, tokenizer, captions=CAPTIONS):
    ids, _ = diffusion.tokenize(tokenizer, captions)
    return diffusion.encode_text(pipe_or_encoder, ids)


def test_training_changes_only_the_lora_of_both_models_and_the_saved_file_reloads(tmp_path, tiny_base, latent_dir):
    """The real loop with the text encoder's LoRA on: every base weight of the UNet and the text
    encoder is untouched, both LoRAs moved, validation used the adapted encoder's embeddings,
    and the saved file (`load_lora_weights`) gives the trained models' text embeddings and UNet
    output; the kohya file and the fused export reload to the same outputs."""
    p = train_params(max_steps=6, val_every=6, checkpoint_every=6, learning_rate=1e-2, text_encoder_lora=TE)
    model = setup_model(p, tiny_base, make_accelerator(p.train))
    assert lora_components(model.base) == ["unet", "text_encoder"]
    before = {name: {k: v.clone() for k, v in m.state_dict().items() if "lora_" not in k}
              for name, m in model.adapters().items()}
    data = setup_data(p, model, latent_dir)
    assert data.text.table is None  # no cache: the encoder trains
    out = outputs(tmp_path)
    run = Run(params=p, model=model, data=data, state=RunState(early=EarlyStop(10, 0.0)), out=out,
              fingerprint=fingerprint(p, latent_dir, tiny_base, 1))
    training_loop(run)
    for name, m in model.adapters().items():
        after = m.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before[name].items()), f"{name}: a base weight changed"
        lora_b = [v for k, v in after.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b), f"{name}: LoRA did not train"

    model.train_mode(False)
    tokenizer = model.base.tokenizer
    trained_e = _embed(model.base.text_encoder, tokenizer)
    assert (trained_e - _embed(load_base(tiny_base, CPU, with_vae=False).text_encoder, tokenizer)).abs().max() > 1e-3
    # validation at step 6 scored the adapted embeddings, not the cached base ones
    val_e = diffusion.encode_text(model.base.text_encoder, data.val_ids).float()
    mse, _ = eval_losses(model.raw_unet, model.base.noise_scheduler, data.val_latents, val_e, data.val_plan, 16)
    assert run.state.history[-1]["step"] == 6
    assert run.state.history[-1]["mse"] == pytest.approx(summarize(mse, mse)["mse"], rel=1e-6)

    save_adapters(run)
    x, t = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([5, 300, 900])
    with torch.no_grad():
        want = model.raw_unet(x, t, trained_e).sample
    last = load_pipeline(tiny_base, out.lora_dir / "last", CPU)
    assert lora_components(last) == ["unet", "text_encoder"]
    got_e = _embed(last.text_encoder, tokenizer)
    assert (got_e - trained_e).abs().max() < 1e-5
    with torch.no_grad():
        assert (last.unet(x, t, got_e).sample - want).abs().max() < 1e-5

    # the best adapter (the file the stage ships), three ways
    best = load_pipeline(tiny_base, out.lora_dir, CPU)
    best_e = _embed(best.text_encoder, tokenizer)
    with torch.no_grad():
        best_out = best.unet(x, t, best_e).sample
    kohya = load_pipeline(tiny_base, None, CPU)
    kohya.load_lora_weights(str(out.lora_dir), weight_name=KOHYA_WEIGHTS)
    kohya.text_encoder.eval(), kohya.unet.eval()
    export_fused(tiny_base, out.lora_dir, tmp_path / "fused")
    fused = load_pipeline(tmp_path / "fused", None, CPU)
    assert lora_components(fused) == []
    for name, pipe, tol in (("kohya", kohya, 1e-5), ("fused", fused, 1e-4)):
        e = _embed(pipe.text_encoder, tokenizer)
        assert (e - best_e).abs().max() < tol, name
        with torch.no_grad():
            assert (pipe.unet(x, t, e).sample - best_out).abs().max() < tol, name
    with safe_open(str(out.lora_dir / KOHYA_WEIGHTS), "pt") as f:
        alphas = {k.split(".")[0].split("_")[1]: float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")}
        te_keys = [k for k in f.keys() if k.startswith("lora_te_")]
    assert alphas == {"unet": 12.0, "te": 4.0}  # alpha = rank: alpha / rank is in lora_up (24 / 12, 6 / 4)
    assert te_keys and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te_keys)  # kohya's CLIP names
    with safe_open(str(out.lora_dir / LORA_WEIGHTS), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"unet", "text_encoder"}
        # CLIP's classic layout, which transformers 4.x needs and diffusers strips for transformers 5
        assert all(k.startswith("text_encoder.text_model.encoder.layers.") for k in f.keys() if "text_encoder" in k)
        # both parts described (kohya's ss_network_dim/alpha hold one number each)
        assert json.loads(f.metadata()["fashion_lora_adapter"]) == {
            "unet": {"rank": 12, "alpha": 24.0, "scale_in_lora_B": True},
            "text_encoder": {"rank": 4, "alpha": 6.0, "scale_in_lora_B": True}}


def test_resume_with_text_encoder_lora_and_ema_is_bit_exact(tmp_path, tiny_base, latent_dir):
    """Both LoRAs, their optimizer groups (the text encoder's own learning rate) and the moving
    average of both survive a crash: the resumed run ends with the same files."""
    p = train_params(max_steps=8, val_every=4, checkpoint_every=4, ema={"enabled": True, "decay": 0.9},
                     text_encoder_lora={**TE, "learning_rate": 1e-3})
    report = train(p, tiny_base, latent_dir, outputs(tmp_path / "full"))
    assert report["text_encoder_lora_modules"] == 8  # 2 layers x q, k, v, out
    with pytest.raises(Crash):
        train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"), on_validation=crash_at(8))
    assert train(p, tiny_base, latent_dir, outputs(tmp_path / "cut"))["resumed_from_step"] == 4
    for rel in (LORA_WEIGHTS, f"last/{LORA_WEIGHTS}", KOHYA_WEIGHTS, "../ckpt/checkpoint.pt"):
        assert (tmp_path / "full/lora" / rel).read_bytes() == (tmp_path / "cut/lora" / rel).read_bytes(), rel
    ckpt = torch.load(tmp_path / "full/ckpt/checkpoint.pt", weights_only=True)
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]][1] < 1e-3  # its own lr, on the schedule
    assert len(ckpt["ema"]["shadow"]) == sum(len(s) for s in ckpt["lora"].values())


def test_evaluate_scores_the_base_with_the_base_text_encoder(tmp_path, tiny_base, latent_dir):
    """With a text-encoder LoRA the base/LoRA comparison must switch the embeddings too: the
    'base' val loss of the adapted pipeline equals the plain base pipeline's."""
    train(train_params(max_steps=4, val_every=4, learning_rate=1e-2, text_encoder_lora=TE),
          tiny_base, latent_dir, outputs(tmp_path))
    val = load_latents(latent_dir, "val")
    args = (val.per_item(), [it["caption"] for it in val.items], 1, 2, 16, 0)
    adapted, _ = val_losses(load_pipeline(tiny_base, tmp_path / "lora", CPU), *args)
    plain, _ = val_losses(load_pipeline(tiny_base, None, CPU), *args)
    assert adapted["base"] == plain["base"] and adapted["lora"] != adapted["base"]


def test_text_encoder_target_typo_names_the_key(tiny_base):
    base = load_base(tiny_base, CPU, with_vae=False)
    te = train_params(text_encoder_lora={"target_modules": ["q_proj", "qkv"]}).train.text_encoder_lora
    with pytest.raises(UserError, match=r"train\.text_encoder_lora\.target_modules: \['qkv'\] match no module"):
        attach_lora(base.text_encoder, te, "train.text_encoder_lora")

"""The real SD1.5 UNet architecture (random weights, no download): LoRA targets, adapter key
names and shapes, and one training step at 64x64 px (8x8 latents) on CPU."""

from dataclasses import replace

import pytest
import torch
from PIL import Image

from fashion_lora import diffusion
from fashion_lora.lora import attach_lora, keep_lora_fp32, lora_state
from tests.helpers import small_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15_unet():
    from fashion_lora.sd15 import build_sd15_unet

    return build_sd15_unet(seed=0)


def test_sd15_lora_targets_keys_and_shapes(sd15_unet):
    from diffusers import DDPMScheduler

    from fashion_lora.tiny import SD_SCHEDULE

    p = small_params().train.lora
    unet = sd15_unet
    assert sum(q.numel() for q in unet.parameters()) > 850_000_000  # the real 860M-parameter UNet
    attach_lora(unet, p)
    keep_lora_fp32(unet)
    state = lora_state(unet)
    modules = {k.rsplit(".lora_", 1)[0] for k in state}
    # 16 transformer blocks x (proj_in, proj_out, 2 attentions x q/k/v/out) + 22 resnets x (conv1, conv2)
    assert len(modules) == 16 * (2 + 8) + 22 * 2 == 204
    named = dict(unet.named_modules())
    for m in modules:
        base = named[m].base_layer
        a, b = state[f"{m}.lora_A.weight"], state[f"{m}.lora_B.weight"]
        if isinstance(base, torch.nn.Conv2d):
            assert a.shape == (p.rank, base.in_channels, *base.kernel_size) and b.shape == (base.out_channels, p.rank, 1, 1)
        else:
            assert a.shape == (p.rank, base.in_features) and b.shape == (base.out_features, p.rank)
    assert state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"].shape == (p.rank, 768)

    # one training step at 64x64 px: finite loss, LoRA B moves, base weights do not
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k not in ("steps_offset", "set_alpha_to_one")})
    params = [q for q in unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    probe = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    base_before = named[probe].base_layer.weight.clone()
    lat = torch.randn(1, 4, 8, 8)
    loss = diffusion.training_loss(unet, scheduler, lat, torch.randn_like(lat), torch.tensor([500]),
                                   torch.randn(1, 77, 768), None)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert named[probe].lora_B["default"].weight.abs().sum() > 0
    assert torch.equal(named[probe].base_layer.weight, base_before)


def test_attribute_metric_runs_unchanged_on_the_sd15_architecture(tmp_path):
    """evaluate's attribute metric on the whole SD1.5 architecture at random weights (CLIP-L
    text encoder, 4-channel VAE, a LoRA on the UNet): images of a DeepFashion caption at a
    portrait bucket, read by a judge of another input size, scored, KID computed. Shapes and
    wiring only: random weights draw noise."""
    import pandas as pd
    from peft import LoraConfig

    from fashion_lora import attributes as A
    from fashion_lora.evaluation import attribute_metric
    from fashion_lora.judge import Judge, JudgeNet
    from fashion_lora.sd15 import build_sd15_random

    pipe = build_sd15_random(0, tmp_path)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v", "to_k", "to_out.0"]))
    pipe.set_progress_bar_config(disable=True)
    classes = {"sleeve_length": ["long-sleeve", "short-sleeve", "sleeveless"], "hat": ["no", "yes"]}
    report = {"attributes": {a: {"scored": True, "scored_values": v, "recall": dict.fromkeys(v, 0.9)}
                             for a, v in classes.items()}}
    judge = Judge(JudgeNet(classes, 48, 32).eval(), report)
    df = pd.DataFrame([{**dict.fromkeys(A.NAMES, A.NA), "split": "val", "image_name": "x.jpg", "caption":
                        "The T-shirt this guy wears has short sleeves and it is with cotton fabric and pure color "
                        "patterns. This gentleman wears a hat.", "sleeve_length": "short-sleeve", "hat": "yes"}])
    reference = judge.read([Image.new("RGB", (32, 48), (40 * k, 90, 200)) for k in range(3)])[1]
    settings = replace(small_params().evaluate, captions_per_value=1, attribute_seeds=2, attribute_steps=1)
    result = attribute_metric(pipe, judge, reference, df, set(), settings, small_params().generate, (96, 64), 0, 154)
    metrics = result.metrics
    assert set(metrics["attributes"]) == {"sleeve_length", "hat"}
    assert all(0 <= r["lora"] <= 1 and r["chance"] == 1.0 and not r["withheld"] for r in metrics["attributes"].values())
    assert set(metrics["kid"]) == {"base", "lora"} and metrics["attribute_images_per_model"] == 2
    assert len(result.reads) == 2 * 2 * 2 and result.sheet is not None  # models x seeds x attributes
    result.write(tmp_path / "out")
    assert Image.open(tmp_path / "out/attribute_sheet.png").size[0] > 0

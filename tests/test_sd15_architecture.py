"""The real SD1.5 UNet architecture (random weights, no download): LoRA targets, adapter key
names and shapes, and one training step at 64x64 px (8x8 latents) on CPU."""

import pytest
import torch

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

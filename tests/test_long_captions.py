"""`train.max_token_length`: captions in 75-token windows (kohya), against the 77-token encoding
of the same text, in training, sampling and the train report; `auto`, the window filter measures."""

import json

import pytest
import torch

from fashion_lora import diffusion, tokens
from fashion_lora.base import load_base
from fashion_lora.errors import UserError
from fashion_lora.lora import load_pipeline
from fashion_lora.sampling import sample_image
from fashion_lora.training import train
from tests.helpers import outputs, train_params

CPU = torch.device("cpu")
# DeepFashion's first published example (76 tokens) with two more sentences: 89 tokens, past 77
LONG = ("The upper clothing has long sleeves, cotton fabric and solid color patterns. The neckline of it is v-shape. "
        "The lower clothing is of long length. The fabric is denim and it has solid color patterns. This lady also "
        "wears an outer clothing, with cotton fabric and complicated patterns. This female is wearing a ring on her "
        "finger. This female has neckwear. There is a hat on her head. She wears a belt.")
SHORT = "The lady wears a sleeveless tank top with striped patterns."


@pytest.fixture(scope="module")
def base(tiny_base):
    return load_base(tiny_base, CPU, with_vae=False)


def test_windows_hold_the_whole_caption_and_the_first_is_the_77_token_encoding(base):
    tok = base.tokenizer
    assert len(tok(LONG).input_ids) == 89
    ids77, cut77 = diffusion.tokenize(tok, [LONG, SHORT])
    ids154, cut154 = diffusion.tokenize(tok, [LONG, SHORT], 154)
    assert ids77.shape == (2, 77) and ids154.shape == (2, 154) and (cut77, cut154) == (1, 0)
    assert torch.equal(ids154[:, :77], ids77)  # window 1 = start + the first 75 tokens + end
    body = tok(LONG, add_special_tokens=False).input_ids
    second = ids154[0, 77:].tolist()
    assert second[0] == tok.bos_token_id and second[1:1 + len(body) - 75] == body[75:]  # the end that 77 loses
    assert second[1 + len(body) - 75] == tok.eos_token_id
    assert diffusion.tokenize(tok, [LONG * 3], 231)[1] == 1  # 261 tokens: past three windows too

    e77 = diffusion.encode_text(base.text_encoder, ids77)
    e154 = diffusion.encode_text(base.text_encoder, ids154)
    assert e154.shape == (2, 154, e77.shape[-1])
    assert torch.allclose(e154[:, :77], e77, atol=1e-6)  # each window encoded on its own
    empty = diffusion.encode_text(base.text_encoder, diffusion.tokenize(tok, [""])[0])
    assert torch.allclose(e154[1, 77:], empty[0], atol=1e-6)  # a short caption's second window is empty
    assert not torch.allclose(e154[0, 77:], empty[0], atol=1e-3)  # the long one's holds its end


def test_sampling_uses_the_windows_and_pads_the_negative_prompt(tiny_base):
    pipe = load_pipeline(tiny_base, None, CPU)
    inputs = diffusion.prompt_inputs(pipe, LONG, "", 154)
    assert inputs["prompt_embeds"].shape[1] == inputs["negative_prompt_embeds"].shape[1] == 154
    assert diffusion.prompt_inputs(pipe, LONG, "blurry", 77) == {"prompt": LONG, "negative_prompt": "blurry"}
    args = ("blurry", 2, 5.0, 3, 64, 64)
    a, b = sample_image(pipe, LONG, *args, 154), sample_image(pipe, LONG, *args, 154)
    assert a.tobytes() == b.tobytes()  # seeded
    assert a.tobytes() != sample_image(pipe, LONG, *args, 77).tobytes()  # the caption's end now counts


def test_training_at_154_tokens_counts_no_truncation(tmp_path, tiny_base, latent_dir):
    """A short run at 154 tokens; the report counts captions past the windows (none here, the
    fixture's captions are short) and says the length."""
    report = train(train_params(max_steps=2, val_every=2, checkpoint_every=2, max_token_length=154), tiny_base,
                   latent_dir, outputs(tmp_path))
    assert report["truncated_captions"] == {"train": 0, "val": 0}
    assert report["params"]["max_token_length"] == 154


def test_auto_takes_the_smallest_window_that_holds_every_caption(tmp_path, base):
    """filter's record (reports/caption_tokens.json) and how train resolves `auto` from it."""
    tok = base.tokenizer
    short = tokens.measure(tok, [SHORT, SHORT + " She wears a belt."])
    assert short["max_token_length"] == 77 and short["over_77"] == 0 and short["longest"] < 77
    # DeepFashion's real captions: one in ten past 77 (here one of two), none past 154
    long = tokens.measure(tok, [SHORT, LONG])
    assert long == {**long, "max_token_length": 154, "longest": 89, "over_77": 1, "over_window": 0}
    huge = tokens.measure(tok, [LONG * 3])  # 261 tokens: even three windows cut it, and the record says so
    assert huge["max_token_length"] == 231 and huge["over_window"] == 1
    record = tmp_path / "caption_tokens.json"
    record.write_text(json.dumps(long))
    assert tokens.resolve("auto", record) == 154
    assert tokens.resolve(77, record) == 77  # an explicit window wins
    with pytest.raises(UserError, match="dvc repro filter"):
        tokens.resolve("auto", tmp_path / "missing.json")


def test_train_refuses_an_unresolved_window(tmp_path, tiny_base, latent_dir):
    with pytest.raises(ValueError, match="resolve it before train"):
        train(train_params(max_token_length="auto"), tiny_base, latent_dir, outputs(tmp_path))


def test_the_cli_encodes_prompts_to_the_window_the_adapter_records(tmp_path, tiny_base):
    """`--max-token-length auto` (params.yaml's default): the adapter's own window, here 154."""
    from PIL import Image

    from fashion_lora import cli
    from fashion_lora.lora import attach_lora, lora_state, save_lora

    base = load_base(tiny_base, CPU, with_vae=False)
    cfg = attach_lora(base.unet, train_params().train.lora)  # B = 0: the base's images, the window still counts
    save_lora(tmp_path / "lora", {"unet": lora_state(base.unet)}, {"unet": cfg}, 154)
    out = tmp_path / "cli.png"
    assert cli.main(["generate", LONG, "--base", str(tiny_base), "--lora", str(tmp_path / "lora"), "--out", str(out),
                     "--steps", "2", "--height", "64", "--width", "64", "--seed", "3", "--no-fuse"]) == 0
    pipe = load_pipeline(tiny_base, tmp_path / "lora", CPU)
    settings = train_params().generate
    expected = sample_image(pipe, LONG, settings.negative_prompt, 2, settings.guidance_scale, 3, 64, 64, 154)
    assert Image.open(out).tobytes() == expected.tobytes()

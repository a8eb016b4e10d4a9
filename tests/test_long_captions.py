"""`train.max_token_length`: captions in 75-token windows (kohya), against the 77-token encoding
of the same text, in training, sampling and the train report."""

import pytest
import torch

from fashion_lora import diffusion
from fashion_lora.base import load_base
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

"""Diffusion math shared by pretraining and fine-tuning: targets, (min-SNR weighted) loss, caption
tokens and text-encoder outputs."""

from __future__ import annotations

import torch


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps `t`."""
    a = alphas_cumprod.to(t.device)[t].float()
    return a / (1.0 - a)


def min_snr_weights(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for epsilon or v targets."""
    clipped = torch.clamp(snr_t, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr_t
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1.0)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def target_for(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def per_sample_losses(unet, scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                      encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet on noised latents; returns per-sample (MSE, MAE) in fp32, shape [b] each."""
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states).sample
    target = target_for(scheduler, latents, noise, t)
    diff = pred.float() - target.float()
    return diff.pow(2).mean(dim=(1, 2, 3)), diff.abs().mean(dim=(1, 2, 3))


def training_loss(unet, scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  encoder_hidden_states: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
    """Mean MSE on the target, optionally min-SNR weighted per sample."""
    mse, _ = per_sample_losses(unet, scheduler, latents, noise, t, encoder_hidden_states)
    if min_snr_gamma is not None:
        w = min_snr_weights(snr(scheduler.alphas_cumprod, t), min_snr_gamma,
                            scheduler.config.prediction_type)
        mse = mse * w.to(mse.device)
    return mse.mean()


def text_hidden_states(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the text encoder (what SD's UNet cross-attends to), gradients as
    the caller sets them. Ids longer than the encoder's positions (`train.max_token_length`
    154 or 231) are windows of that length: each is encoded on its own and the hidden states
    are concatenated, [N, windows * 77, D]."""
    plain = getattr(text_encoder, "module", text_encoder)  # a training encoder may be wrapped in DDP
    window = plain.config.max_position_embeddings
    n, length = input_ids.shape
    if length <= window:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids.reshape(n * (length // window), window))[0]
    return out.reshape(n, length, out.shape[-1])


@torch.no_grad()
def encode_text(text_encoder, input_ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """`text_hidden_states` in batches, without gradients."""
    device = next(text_encoder.parameters()).device
    out = [text_hidden_states(text_encoder, input_ids[s:s + batch_size].to(device))
           for s in range(0, len(input_ids), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def tokenize(tokenizer, captions: list[str], max_length: int | None = None) -> tuple[torch.Tensor, int]:
    """Token ids [N, max_length] and how many captions did not fit.

    `max_length` None or the tokenizer's own (77): padded/truncated to it, as SD pipelines do.
    A multiple of it (154, 231: kohya's `max_token_length`): the caption's tokens in windows of
    75, each with its own start and end token and padded to 77, the windows side by side;
    `text_hidden_states` encodes each window apart. Only what passes all windows is cut.
    """
    window = tokenizer.model_max_length
    max_length = max_length or window
    if max_length % window:
        raise ValueError(f"max_length {max_length} is not a multiple of the tokenizer's {window}")
    body = tokenizer(captions, truncation=False, padding=False, add_special_tokens=False).input_ids
    inner = window - 2
    truncated = sum(len(ids) > inner * (max_length // window) for ids in body)
    if max_length == window:
        ids = tokenizer(captions, truncation=True, padding="max_length", max_length=window,
                        return_tensors="pt").input_ids
        return ids, truncated
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for ids in body:
        row = []
        for k in range(max_length // window):
            chunk = ids[k * inner:(k + 1) * inner]
            row += [bos, *chunk, eos] + [pad] * (inner - len(chunk))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long), truncated


def prompt_inputs(pipe, prompt: str, negative_prompt: str, max_token_length: int = 77) -> dict:
    """The prompt arguments of a diffusers pipeline call. At 77 tokens the prompt itself (the
    pipeline tokenizes it as training did); longer (`train.max_token_length`) its embeddings
    from the windowed encoding training used, the negative prompt encoded to the same length
    (classifier-free guidance concatenates the two)."""
    if max_token_length == pipe.tokenizer.model_max_length:
        return {"prompt": prompt, "negative_prompt": negative_prompt or None}
    ids, _ = tokenize(pipe.tokenizer, [prompt, negative_prompt or ""], max_token_length)
    embeds = encode_text(pipe.text_encoder, ids)
    return {"prompt_embeds": embeds[:1], "negative_prompt_embeds": embeds[1:]}

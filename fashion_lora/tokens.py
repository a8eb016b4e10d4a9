"""The caption token window (`train.max_token_length`): measured by the filter stage on every
kept caption with the base's tokenizer, resolved for `auto`, and recorded in the adapter.

DeepFashion-MultiModal's captions run 61 CLIP tokens at the median and 112 at the longest (start
and end token counted): one in ten is over SD's 77 and would lose its end (accessories, the
outer garment). `auto` takes the smallest window of 77 / 154 / 231 (one to three 75-token
windows, kohya's scheme; `diffusion.tokenize`) that holds every caption.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import UserError

WINDOWS = (77, 154, 231)


def caption_tokens(tokenizer, captions: list[str]) -> list[int]:
    """Each caption's length in tokens, its start and end token counted (as CLIP encodes it)."""
    body = tokenizer(captions, truncation=False, padding=False, add_special_tokens=False).input_ids
    return [len(ids) + 2 for ids in body]


def measure(tokenizer, captions: list[str]) -> dict:
    """The record `filter` writes: the caption lengths and the window that holds them all."""
    lengths = sorted(caption_tokens(tokenizer, captions))
    window = tokenizer.model_max_length  # 77 for CLIP
    inner = window - 2
    longest = lengths[-1] if lengths else 0
    needed = max(1, math.ceil((longest - 2) / inner))
    resolved = window * min(needed, len(WINDOWS))
    return {
        "max_token_length": resolved,
        "captions": len(lengths),
        "longest": longest,
        "median": lengths[len(lengths) // 2] if lengths else 0,
        "p90": lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))] if lengths else 0,
        "over_77": sum(n > 77 for n in lengths),  # what SD's own window cuts
        # what even the largest window cuts (more than three 75-token windows)
        "over_window": sum(n - 2 > inner * (resolved // window) for n in lengths),
    }


def resolve(value: int | str, record: Path) -> int:
    """`train.max_token_length` as a number: an explicit 77 / 154 / 231 wins; `auto` is the
    window `filter` measured (`record`)."""
    if value != "auto":
        return int(value)
    if not record.is_file():
        raise UserError(f"{record} is missing: `train.max_token_length: auto` takes the window the filter stage "
                        "measured on the captions; run `dvc repro filter` (or set 77, 154 or 231)")
    return int(json.loads(record.read_text())["max_token_length"])

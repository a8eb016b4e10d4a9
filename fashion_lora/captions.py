"""Caption cleaning, validation and augmentation."""

from __future__ import annotations

import random
import unicodedata
from typing import Any, Optional


def clean_caption(text: str) -> str:
    """Unicode-normalise (NFC) and collapse all whitespace runs to single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def caption_reason(caption: Any, min_length: int) -> Optional[str]:
    """Why a raw caption is unusable, or None. Length counts characters after cleaning."""
    if not isinstance(caption, str):
        return "caption_not_string"
    if len(clean_caption(caption)) < min_length:
        return "caption_too_short"
    return None


def unsafe_name_reason(name: str) -> Optional[str]:
    """Caption keys must be plain file names: nothing outside the images folder is ever read."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return "unsafe_caption_key"
    if name.startswith("~") or ":" in name:  # home expansion, Windows drive letters
        return "unsafe_caption_key"
    return None


def augment_caption(caption: str, rng: random.Random, quality_terms: list[str],
                    quality_prob: float, dropout_prob: float) -> str:
    """Caption dropout (to "") first, else optionally append one quality term."""
    if rng.random() < dropout_prob:
        return ""
    if quality_terms and rng.random() < quality_prob:
        return f"{caption}, {rng.choice(quality_terms)}"
    return caption

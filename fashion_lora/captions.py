"""Caption loading, cleaning and validation."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

from .errors import UserError


def clean_caption(text: str) -> str:
    """Unicode-normalise (NFC) and collapse all whitespace runs to single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def caption_reason(caption: Any, min_length: int) -> str | None:
    """Why a raw caption is unusable, or None. Length counts characters after cleaning."""
    if not isinstance(caption, str):
        return "caption_not_string"
    if len(clean_caption(caption)) < min_length:
        return "caption_too_short"
    return None


def unsafe_name_reason(name: str) -> str | None:
    """Caption keys must be plain file names: nothing outside the images folder is ever read."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return "unsafe_caption_key"
    if name.startswith("~") or ":" in name:  # home expansion, Windows drive letters
        return "unsafe_caption_key"
    return None


def load_captions(path: Path) -> dict:
    """Read a captions JSON object; anything else stops with the file and the problem named."""
    try:
        raw = json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte-order mark is not content
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: captions file is not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: captions file is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: captions must be a JSON object {{file_name: caption}}, "
                        f"got a JSON {type(raw).__name__}")
    return raw

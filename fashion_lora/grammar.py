"""A parser of DeepFashion-MultiModal's caption grammar: caption -> the attributes it states.

The filter stage uses it for images without label lines, and to measure how often captions
and labels agree. Its own module: only filter reads it, so an edit reruns filter and what follows.
"""

from __future__ import annotations

import re

# DeepFashion-MultiModal's captions are written from the labels in a template grammar: one
# garment per sentence (or per clause), then accessories. The parser finds the garment a
# clause is about from its nouns (a clause without one continues the previous garment) and
# the attribute values from their phrases. It reads what a caption states; everything else
# stays unknown.
_GARMENTS = (
    ("outer", r"outer clothing|outerwear|cardigan|coat|jacket"),
    ("lower", r"lower clothing|pants|trousers|shorts|skirt|jeans|leggings|trunks"),
    ("upper", r"upper clothing|t-shirt|tank shirt|tank top|shirt|sweater|blouse|top|vest|dress|jumpsuit|romper"),
)
_SLEEVES = (("sleeveless", r"sleeveless|no sleeves"), ("short-sleeve", r"short[- ]sleeves?"),
            ("medium-sleeve", r"medium[- ]sleeves?"), ("long-sleeve", r"long[- ]sleeves?"))
_LENGTHS = (("three-point", r"three-point"), ("medium short", r"medium[- ]short"),
            ("three-quarter", r"three-quarter"), ("long", r"long(?![- ]sleeve)"))
_FABRICS = (("denim", r"denim"), ("cotton", r"cotton"), ("leather", r"leather"), ("furry", r"fur(?:ry)?"),
            ("knitted", r"knit(?:ted|ting)?"), ("chiffon", r"chiffon"))
_PATTERN_WORDS = (("floral", r"floral|flower"), ("graphic", r"graphic"), ("striped", r"strip(?:e|ed|es)"),
                  ("pure color", r"pure color|solid color|plain"), ("lattice", r"lattice|plaid|check(?:ed)?"),
                  ("color block", r"color block"), ("other", r"complicated|mixed|\bother\b"))
_NECKLINES = (("V-shape", r"v-shape|v-neck"), ("square", r"square"), ("round", r"round|crew"),
              ("standing", r"standing|stand-up"), ("lapel", r"lapel"), ("suspenders", r"suspender"))
# (attribute, phrase, the value a mention states)
_ACCESSORIES = (("hat", r"\bhat\b|\bcap\b", "yes"), ("neckwear", r"neckwear|scarf|necklace", "yes"),
                ("wrist_wearing", r"wrist", "yes"), ("ring", r"\bring\b", "yes"),
                ("waist_accessories", r"\bbelt\b", "belt"), ("socks", r"\bsocks\b", "socks"),
                ("glasses", r"sunglasses", "sunglasses"), ("glasses", r"(?<!sun)glasses", "eyeglasses"))


def _first(table, text: str) -> str | None:
    hits = [(m.start(), value) for value, pattern in table for m in [re.search(pattern, text)] if m]
    return min(hits)[1] if hits else None


def _garment(text: str) -> str | None:
    hits = [(m.start(), part) for part, pattern in _GARMENTS for m in [re.search(rf"\b(?:{pattern})\b", text)] if m]
    return min(hits)[1] if hits else None


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes a DeepFashion-style caption states, by attribute name (absent = unstated)."""
    out: dict[str, str] = {}
    current = "upper"
    for sentence in re.split(r"(?<=[.!?])\s+", caption.lower()):
        # a sentence naming two garments ("..., and the pants are ...") is read clause by clause
        clauses = re.split(r",\s*and\s+|;\s*|\s+while\s+", sentence)
        for clause in clauses:
            if "neckline" in clause:
                value = _first(_NECKLINES, clause)
                if value:
                    out["neckline"] = value
                continue
            accessories = {name: value for name, pattern, value in _ACCESSORIES if re.search(pattern, clause)}
            if accessories and _garment(clause) is None:
                out.update(accessories)
                continue
            current = _garment(clause) or current
            if current == "outer":
                out["outer_cardigan"] = "yes"
            if current == "upper":
                sleeve = _first(_SLEEVES, clause)
                if sleeve:
                    out["sleeve_length"] = sleeve
            if current == "lower":
                length = _first(_LENGTHS, clause)
                if length:
                    out["lower_length"] = length
            fabric = _first(_FABRICS, clause)
            if fabric and "fabric" in clause or fabric == "denim":
                out[f"{current}_fabric"] = fabric
            pattern = _first(_PATTERN_WORDS, clause)
            if pattern and "pattern" in clause:
                out[f"{current}_pattern"] = pattern
    return out

"""A parser of DeepFashion-MultiModal's caption grammar: caption -> the attributes it states.

The filter stage uses it for images without label lines, and to measure how often captions
and labels agree. Its own module: only filter reads it, so an edit reruns filter and what follows.

The captions are written from the labels in a template language (the data set's generator is
not published; the forms below are those of its captions):
- upper: "Her tank shirt has no sleeves, chiffon fabric and graphic patterns.", "The sweater the
  person wears has long sleeves, its fabric is denim, and it has solid color patterns.", "This man
  is wearing a long-sleeve sweater with plaid patterns. The sweater is with cotton fabric and its
  neckline is lapel.", "This lady wears a medium-sleeve shirt with graphic patterns and a
  three-point shorts."
- lower: "The lower clothing is of long length. The fabric is denim and it has solid color
  patterns.", "The pants this man wears is of long length.", "This man wears a long trousers, with
  cotton fabric and solid color patterns.", "The skirt is with other fabric and solid color patterns."
- outer: "This lady also wears an outer clothing, with cotton fabric and complicated patterns.",
  "The outer clothing this person wears is with cotton fabric and solid color patterns."
- accessories: "There is an accessory on her wrist.", "There is an accessory in his her neck.",
  "This female has neckwear.", "The lady has a hat in her head.", "The lady wears a belt.",
  "This person has a pair of glasses on his hands or clothes."

Each value is read from its own phrase: the fabric word before "fabric" (or after "fabric is"),
the pattern word before "patterns", the neckline word before "neckline" (or after "neckline ...
is"), a length before a lower garment's noun or in "of ... length". A fabric or pattern belongs
to the garment last named before it (a sentence naming the shirt and then the shorts gives the
shirt's patterns, which come first, to the shirt). Sleeves are always the upper garment's.
The data set's own words map to its label values ("solid color" -> pure color, "plaid" ->
lattice, "knitting" -> knitted, "mixed" -> other fabric, "complicated" -> other pattern, "crew"
-> round); a word the data set writes for more than one label ("other" and "mixed" patterns, also
written where the pattern is NA) and an attribute stated twice with two values state nothing.
"""

from __future__ import annotations

import re


def _alternation(table: dict[str, str]) -> str:
    """One regex alternation of a {phrase regex: value} table, longest phrases first."""
    return "|".join(sorted(table, key=len, reverse=True))


# garment nouns -> the part of the outfit they name
_GARMENTS = {
    "upper clothing": "upper", "t-shirt": "upper", "tank top": "upper", "tank shirt": "upper", "shirt": "upper",
    "sweater": "upper", "blouse": "upper", "top": "upper", "vest": "upper", "dress": "upper", "jumpsuit": "upper",
    "romper": "upper", "hoodie": "upper", "sweatshirt": "upper",
    "lower clothing": "lower", "pants": "lower", "trousers": "lower", "shorts": "lower", "skirt": "lower",
    "jeans": "lower", "leggings": "lower", "trunks": "lower",
    "outer clothing": "outer", "outerwear": "outer", "cardigan": "outer", "coat": "outer", "jacket": "outer",
    "blazer": "outer",
}
_LOWER_NOUNS = _alternation({k: v for k, v in _GARMENTS.items() if v == "lower"})
_FABRICS = {"denim": "denim", "cotton": "cotton", "leather": "leather", "furry": "furry", "fur": "furry",
            "knitted": "knitted", "knitting": "knitted", "chiffon": "chiffon", "mixed": "other", "other": "other"}
# None: the data set writes the word for more than one label ("other patterns" also where it is NA)
_PATTERNS = {"floral": "floral", "graphic": "graphic", "striped": "striped", "stripe": "striped",
             "stripes": "striped", "pure color": "pure color", "solid color": "pure color", "lattice": "lattice",
             "plaid": "lattice", "color block": "color block", "complicated": "other", "other": None, "mixed": None}
_NECKLINES = {"v-shape": "V-shape", "v-neck": "V-shape", "square": "square", "round": "round", "crew": "round",
              "standing": "standing", "stand-up": "standing", "lapel": "lapel", "suspenders": "suspenders"}
_SLEEVES = {"sleeveless": "sleeveless", "no sleeves": "sleeveless", "sleeves cut off": "sleeveless",
            "short sleeves": "short-sleeve", "short-sleeve": "short-sleeve",
            "medium sleeves": "medium-sleeve", "medium-sleeve": "medium-sleeve",
            "long sleeves": "long-sleeve", "long-sleeve": "long-sleeve"}
_LENGTHS = {"three-point": "three-point", "medium short": "medium short", "medium-short": "medium short",
            "medium": "medium short", "three-quarter": "three-quarter", "long": "long"}
# (attribute, phrase, the value a mention states); captions state accessories only when worn
_ACCESSORIES = (("hat", r"\bhat\b", "yes"),
                ("neckwear", r"\bneckwear\b|\bscarf\b|\baccessory (?:on|in|around) [a-z ]*?\bneck\b", "yes"),
                ("wrist_wearing", r"\bwrist\b|\bbracelet\b", "yes"), ("ring", r"\bring\b", "yes"),
                ("waist_accessories", r"\bbelt\b", "belt"), ("socks", r"\bsocks\b", "socks"),
                ("glasses", r"\bsunglasses\b", "sunglasses"),
                ("glasses", r"\b(?:eye)?glasses\b(?=[^.]*\b(?:hands?|clothes)\b)", "glasses in hand or clothes"),
                ("glasses", r"\b(?:eye)?glasses\b(?![^.]*\b(?:hands?|clothes)\b)", "eyeglasses"))

_GARMENT_RE = re.compile(rf"\b(?:{_alternation(_GARMENTS)})\b")
_FABRIC_RE = re.compile(rf"\b({_alternation(_FABRICS)}) fabric\b|\bfabric is ({_alternation(_FABRICS)})\b")
_PATTERN_RE = re.compile(rf"\b({_alternation(_PATTERNS)}) patterns?\b")
_NECKLINE_RE = re.compile(rf"\b({_alternation(_NECKLINES)}) neckline\b"
                          rf"|\bneckline (?:of [a-z -]+? )?is ({_alternation(_NECKLINES)})\b")
# "a tank tank top": the first "tank" is the sleeve word of a sleeveless top
_SLEEVE_RE = re.compile(rf"\b(?:{_alternation(_SLEEVES)}|tank(?= tank\b))(?![a-z-])")
_LENGTH_RE = re.compile(rf"\bof ({_alternation(_LENGTHS)}) length\b|\b({_alternation(_LENGTHS)}) (?:{_LOWER_NOUNS})\b")


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes a DeepFashion-style caption states, by attribute name (absent = unstated)."""
    text = " ".join(caption.lower().split())
    garments = [(m.start(), _GARMENTS[m.group(0)]) for m in _GARMENT_RE.finditer(text)]

    def part_at(pos: int) -> str:  # the garment named last before `pos` (a caption opens with the upper one)
        return next((part for start, part in reversed(garments) if start < pos), "upper")

    found: dict[str, set[str | None]] = {}

    def state(attr: str, value: str | None) -> None:
        found.setdefault(attr, set()).add(value)

    for m in _FABRIC_RE.finditer(text):
        state(f"{part_at(m.start())}_fabric", _FABRICS[m.group(1) or m.group(2)])
    for m in _PATTERN_RE.finditer(text):
        state(f"{part_at(m.start())}_pattern", _PATTERNS[m.group(1)])
    for m in _NECKLINE_RE.finditer(text):
        state("neckline", _NECKLINES[m.group(1) or m.group(2)])
    for m in _SLEEVE_RE.finditer(text):
        state("sleeve_length", _SLEEVES.get(m.group(0), "sleeveless"))  # or "tank"
    for m in _LENGTH_RE.finditer(text):
        state("lower_length", _LENGTHS[m.group(1) or m.group(2)])
    if any(part == "outer" for _, part in garments):
        state("outer_clothing", "yes")
    for attr, pattern, value in _ACCESSORIES:
        if re.search(pattern, text):
            state(attr, value)
    # one value, and a definite one: a word of several labels, or two values, state nothing
    return {attr: values.pop() for attr, values in found.items() if len(values) == 1 and None not in values}

"""DeepFashion-MultiModal's attribute schema: every attribute's name (its column in
`data/fashion_data.csv`) and the data set's names of its values, by code, and the three label
files holding them. Its own module, read by params.py, so that editing the label readers or
the caption parser (fashion_lora/labels.py) reruns only the stages that read labels.

The code tables follow the data set's current README (2023-01-18); an earlier version skipped
neckline code 3 and put NA at 7, which the data does not use (code 6 is on 15,494 lines, 7 on none).
"""

from __future__ import annotations

from dataclasses import dataclass

NA = "NA"


@dataclass(frozen=True)
class Attribute:
    name: str  # column name in data/fashion_data.csv
    values: tuple[str, ...]  # the data set's value names, by code; NA entries mean "not labelled"

    def decode(self, code: int) -> str | None:
        value = self.values[code]
        return None if value == NA else value

    def encode(self, value: str | None) -> int:
        return self.values.index(NA if value is None else value)


_NO_YES = ("no", "yes", NA)
FABRICS = ("denim", "cotton", "leather", "furry", "knitted", "chiffon", "other", NA)
PATTERNS = ("floral", "graphic", "striped", "pure color", "lattice", "other", "color block", NA)
SHAPE = (
    Attribute("sleeve_length", ("sleeveless", "short-sleeve", "medium-sleeve", "long-sleeve", "not long-sleeve", NA)),
    Attribute("lower_length", ("three-point", "medium short", "three-quarter", "long", NA)),
    Attribute("socks", ("no", "socks", "leggings", NA)),
    Attribute("hat", _NO_YES),
    Attribute("glasses", ("no", "eyeglasses", "sunglasses", "glasses in hand or clothes", NA)),
    Attribute("neckwear", _NO_YES),
    Attribute("wrist_wearing", _NO_YES),
    Attribute("ring", _NO_YES),
    Attribute("waist_accessories", ("no", "belt", "have a clothing", "hidden", NA)),
    Attribute("neckline", ("V-shape", "square", "round", "standing", "lapel", "suspenders", NA)),
    # The README's question is "is the outer clothing a cardigan?" (0 yes, 1 no); no caption says it.
    Attribute("outer_cardigan", ("yes", "no", NA)),
    Attribute("covers_navel", ("no", "yes", NA)),
)
FABRIC = tuple(Attribute(f"{part}_fabric", FABRICS) for part in ("upper", "lower", "outer"))
PATTERN = tuple(Attribute(f"{part}_pattern", PATTERNS) for part in ("upper", "lower", "outer"))
# Whether an outer garment is worn: what the captions state ("... also wears an outer clothing,
# with cotton fabric and ... patterns" is written from the outer fabric and pattern labels). No
# label file holds it: `labels.read_labels` derives it (yes when the outer fabric or pattern is
# labelled, no when both are NA). It stands beside the cardigan question it qualifies.
OUTER_CLOTHING = Attribute("outer_clothing", ("no", "yes"))
SCHEMA = SHAPE[:11] + (OUTER_CLOTHING,) + SHAPE[11:] + FABRIC + PATTERN
BY_NAME = {a.name: a for a in SCHEMA}
NAMES = tuple(BY_NAME)

# (path under the labels folder, the attributes of its columns after the image name)
FILES = (("shape/shape_anno_all.txt", SHAPE), ("texture/fabric_ann.txt", FABRIC),
         ("texture/pattern_ann.txt", PATTERN))

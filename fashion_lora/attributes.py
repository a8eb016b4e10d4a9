"""DeepFashion-MultiModal's attribute schema: every attribute's name (its column in
`data/fashion_data.csv`) and the data set's names of its values, by code, and the three label
files holding them. Its own module, read by params.py, so that editing the label readers or
the caption parser (fashion_lora/labels.py) reruns only the stages that read labels.
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
# The README lists neckline codes 0-2 and 4-7 (3 is skipped); 3 is read as "other" rather
# than refusing a file that uses it.
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
    Attribute("neckline", ("V-shape", "square", "round", "other", "standing", "lapel", "suspenders", NA)),
    Attribute("outer_cardigan", ("yes", "no", NA)),
    Attribute("covers_navel", ("no", "yes", NA)),
)
FABRIC = tuple(Attribute(f"{part}_fabric", FABRICS) for part in ("upper", "lower", "outer"))
PATTERN = tuple(Attribute(f"{part}_pattern", PATTERNS) for part in ("upper", "lower", "outer"))
SCHEMA = SHAPE + FABRIC + PATTERN
BY_NAME = {a.name: a for a in SCHEMA}
NAMES = tuple(BY_NAME)

# (path under the labels folder, the attributes of its columns after the image name)
FILES = (("shape/shape_anno_all.txt", SHAPE), ("texture/fabric_ann.txt", FABRIC),
         ("texture/pattern_ann.txt", PATTERN))

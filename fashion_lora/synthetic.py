"""The synthetic world in DeepFashion-MultiModal's language: figures' garments carrying attributes
of the data set's schema, their labels and template-grammar captions (`figures` draws them,
`embedded` writes the data set to disk).

Drawn (recognisable at the default's 64x96): sleeve length (sleeveless, short, long), lower
clothing length (three-point, three-quarter, long), upper and lower pattern (pure color,
striped, lattice, color block, each at a scale that survives the 64x96 resize), an open
sleeveless outer garment (`outer_clothing`, from its fabric and pattern labels as in the data
set), a hat, and the fabrics, each in its own colour (`figures.FABRIC_COLORS`). Not modelled
(NA in the labels): socks, glasses, neckwear, wrist, ring, waist, neckline, whether the outer
garment is a cardigan, navel. No caption names a hue, as in the real captions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import attributes as A

SLEEVES = ("sleeveless", "short-sleeve", "long-sleeve")
LENGTHS = ("three-point", "three-quarter", "long")
PATTERNS = ("pure color", "striped", "lattice", "color block")
UPPER_FABRICS = ("cotton", "denim", "leather", "knitted", "chiffon")
LOWER_FABRICS = ("cotton", "denim", "leather", "knitted")
UPPER_NOUNS = {"sleeveless": ("tank top", "tank shirt", "vest"), "short-sleeve": ("T-shirt", "shirt"),
               "long-sleeve": ("sweater", "shirt", "blouse")}
LOWER_NOUNS = {"three-point": ("shorts", "pants"), "three-quarter": ("pants", "trousers"),
               "long": ("trousers", "pants")}
VIEWS = ("front", "side", "back", "full")

# `data.synthetic.frequencies: deepfashion`: each drawn attribute with DeepFashion-MultiModal's
# proportions among the values this world draws (image counts of its full label files,
# ../shared/DESIGN.md). Where the counts of some values are not known, they share the rest of the
# data set equally: the lower garment's striped / lattice / color block split the 23% that is not
# pure color as the upper garment's do, the upper fabrics other than cotton (79%) share 21%;
# lower and outer fabrics, whose counts are not known, stay uniform.
DEEPFASHION = {
    "sleeve": {"sleeveless": 17112, "short-sleeve": 8937, "long-sleeve": 14070},
    "length": {"three-point": 16995, "three-quarter": 601, "long": 6619},
    "upper_pattern": {"pure color": 22928, "striped": 2593, "lattice": 882, "color block": 962},
    "lower_pattern": {"pure color": 33941, "striped": 1765, "lattice": 600, "color block": 655},
    "upper_fabric": {"cotton": 34734, "denim": 2340, "leather": 2340, "knitted": 2340, "chiffon": 2340},
    "outer": 5600 / 44096,  # images with an outer garment
    "hat": 0.12,  # "yes" among the images whose hat is labelled
}


@dataclass(frozen=True)
class Garments:
    gender: str  # MEN | WOMEN
    sleeve: str  # SLEEVES
    upper_noun: str
    upper_pattern: str  # PATTERNS
    upper_fabric: str
    lower_length: str  # LENGTHS
    lower_noun: str
    lower_pattern: str
    lower_fabric: str
    outer: bool  # an open, sleeveless outer garment over the upper one
    outer_fabric: str  # "" without one
    hat: bool
    forms: tuple[int, int, int, int]  # sentence forms of the upper, lower, outer and hat sentences


def random_garments(rng: random.Random, frequencies: str = "uniform") -> Garments:
    """One figure's garments: every drawn value equally likely (`uniform`; an outer garment and a
    hat on 30%), or with DeepFashion's proportions (`deepfashion`, `DEEPFASHION`)."""
    if frequencies == "uniform":
        def pick(values: tuple[str, ...], _: str) -> str:
            return rng.choice(values)
        p_outer = p_hat = 0.3
    elif frequencies == "deepfashion":
        def pick(values: tuple[str, ...], key: str) -> str:
            weights = DEEPFASHION.get(key)
            return rng.choices(values, [weights[v] for v in values])[0] if weights else rng.choice(values)
        p_outer, p_hat = DEEPFASHION["outer"], DEEPFASHION["hat"]
    else:
        raise ValueError(f"frequencies must be uniform or deepfashion, got {frequencies!r}")
    sleeve, length = pick(SLEEVES, "sleeve"), pick(LENGTHS, "length")
    outer = rng.random() < p_outer
    lower_fabric = pick(LOWER_FABRICS, "lower_fabric")
    return Garments(
        gender=rng.choice(("MEN", "WOMEN")), sleeve=sleeve, upper_noun=rng.choice(UPPER_NOUNS[sleeve]),
        upper_pattern=pick(PATTERNS, "upper_pattern"), upper_fabric=pick(UPPER_FABRICS, "upper_fabric"),
        lower_length=length, lower_noun="jeans" if lower_fabric == "denim" and length == "long"
        else rng.choice(LOWER_NOUNS[length]),
        lower_pattern=pick(PATTERNS, "lower_pattern"), lower_fabric=lower_fabric,
        outer=outer, outer_fabric=pick(UPPER_FABRICS, "outer_fabric") if outer else "", hat=rng.random() < p_hat,
        forms=(rng.randrange(4), rng.randrange(3), rng.randrange(2), rng.randrange(2)))


def labels_for(g: Garments) -> dict[str, str | None]:
    """The data set's labels of `g` (every schema attribute; None = NA)."""
    row: dict[str, str | None] = dict.fromkeys(A.NAMES)
    row.update(sleeve_length=g.sleeve, lower_length=g.lower_length, hat="yes" if g.hat else "no",
               outer_clothing="yes" if g.outer else "no", upper_fabric=g.upper_fabric, lower_fabric=g.lower_fabric,
               upper_pattern=g.upper_pattern, lower_pattern=g.lower_pattern,
               outer_fabric=g.outer_fabric or None, outer_pattern="pure color" if g.outer else None)
    return row


def caption_for(g: Garments, withheld: frozenset[str] = frozenset(), neutral_word: str = "") -> str:
    """A caption in DeepFashion-MultiModal's template grammar, written from the attributes.

    The words of each attribute in `withheld` are replaced by `neutral_word` (the tiny base's
    pretraining captions), so the base never learns what they mean."""
    def say(attr: str, text: str) -> str:
        return neutral_word if attr in withheld else text

    men = g.gender == "MEN"
    person = ("The gentleman", "This guy", "The man")[g.forms[1]] if men else \
        ("The lady", "This woman", "The female")[g.forms[1]]
    they, their = ("He", "his") if men else ("She", "her")
    sleeve_adj = say("sleeve_length", g.sleeve)
    sleeves = say("sleeve_length", {"sleeveless": "no", "short-sleeve": "short", "long-sleeve": "long"}[g.sleeve]) + " sleeves"
    up_pat, up_fab = say("upper_pattern", g.upper_pattern), say("upper_fabric", g.upper_fabric)
    noun = g.upper_noun
    upper = (f"{person} wears a {sleeve_adj} {noun} with {up_fab} fabric and {up_pat} patterns.",
             f"The {noun} {'this guy' if men else 'this lady'} wears has {sleeves} and it is with {up_fab} fabric "
             f"and {up_pat} patterns.",
             f"The upper clothing has {sleeves}, {up_fab} fabric and {up_pat} patterns.",
             f"{person} is wearing a {sleeve_adj} {noun} with {up_pat} patterns. The {noun} is with {up_fab} fabric.",
             )[g.forms[0]]
    length, lnoun = say("lower_length", g.lower_length), g.lower_noun
    lo_pat, lo_fab = say("lower_pattern", g.lower_pattern), say("lower_fabric", g.lower_fabric)
    lower = (f"The lower clothing is of {length} length. The fabric is {lo_fab} and it has {lo_pat} patterns.",
             f"{they} wears a {length} {lnoun}. The {lnoun} are with {lo_fab} fabric and {lo_pat} patterns.",
             f"{they} wears {length} {lnoun} with {lo_fab} fabric and {lo_pat} patterns.")[g.forms[1]]
    parts = [upper, lower]
    if g.outer:
        out_fab, out_pat = say("outer_fabric", g.outer_fabric), say("outer_pattern", "pure color")
        parts.append((f"{person} also wears an outer clothing, with {out_fab} fabric and {out_pat} patterns.",
                      f"There is an outer clothing with {out_fab} fabric and {out_pat} patterns.")[g.forms[2]])
    if g.hat:
        hat = say("hat", "a hat")
        parts.append((f"{person} wears {hat}.", f"There is {hat} on {their} head.")[g.forms[3]])
    return " ".join(parts)

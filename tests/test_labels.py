"""DeepFashion labels as data: the label files round trip, malformed lines are named, the caption
grammar parser reads the data set's published examples, and the synthetic world's captions,
labels and images agree."""

import random

import pytest

from fashion_lora import attributes as A
from fashion_lora import labels as L
from fashion_lora import synthetic
from fashion_lora.grammar import parse_caption
from fashion_lora.utils import UserError

# Published examples from DeepFashion-MultiModal's captions.json (issue 26).
EXAMPLES = [
    ("The upper clothing has long sleeves, cotton fabric and solid color patterns. The neckline of it is v-shape. "
     "The lower clothing is of long length. The fabric is denim and it has solid color patterns. This lady also "
     "wears an outer clothing, with cotton fabric and complicated patterns. This female is wearing a ring on her "
     "finger. This female has neckwear.",
     {"sleeve_length": "long-sleeve", "upper_fabric": "cotton", "upper_pattern": "pure color", "neckline": "V-shape",
      "lower_length": "long", "lower_fabric": "denim", "lower_pattern": "pure color", "outer_cardigan": "yes",
      "outer_fabric": "cotton", "outer_pattern": "other", "ring": "yes", "neckwear": "yes"}),
    ("The lady is wearing a sleeveless tank shirt with graphic patterns. The tank shirt is with chiffon fabric. It "
     "has a round neckline. The lady wears a three-point pants. The pants are with cotton fabric and floral "
     "patterns. There is an accessory on her wrist. This woman has neckwear. The person is wearing a ring on her "
     "finger.",
     {"sleeve_length": "sleeveless", "upper_pattern": "graphic", "upper_fabric": "chiffon", "neckline": "round",
      "lower_length": "three-point", "lower_fabric": "cotton", "lower_pattern": "floral", "wrist_wearing": "yes",
      "neckwear": "yes", "ring": "yes"}),
    ("The T-shirt this guy wears has short sleeves and it is with cotton fabric and pure color patterns. The "
     "neckline of the T-shirt is lapel. This gentleman wears a hat.",
     {"sleeve_length": "short-sleeve", "upper_fabric": "cotton", "upper_pattern": "pure color", "neckline": "lapel",
      "hat": "yes"}),
]


@pytest.mark.parametrize("caption, expected", EXAMPLES)
def test_parser_reads_the_published_examples(caption, expected):
    assert parse_caption(caption) == expected


def test_parser_states_nothing_for_a_caption_outside_the_grammar():
    assert parse_caption("A photo.") == {}
    assert parse_caption("The lady wears a red dress.") == {}  # a garment, but no attribute stated


def test_label_files_round_trip(tmp_path):
    rng = random.Random(0)
    labels = {f"img_{i}.jpg": synthetic.labels_for(synthetic.random_garments(rng)) for i in range(30)}
    labels["img_na.jpg"] = dict.fromkeys(A.NAMES)  # every attribute NA
    labels["img_all.jpg"] = {a.name: a.values[-2] for a in A.SCHEMA}  # the last non-NA code of each
    L.write_labels(tmp_path, labels)
    assert L.read_labels(tmp_path) == labels
    first = (tmp_path / "shape/shape_anno_all.txt").read_text().splitlines()[0].split()
    assert len(first) == 13 and all(c.isdigit() for c in first[1:])  # the data set's layout: name + 12 codes
    assert (tmp_path / "texture/pattern_ann.txt").read_text().count("\n") == 32


def test_an_image_missing_from_one_file_gets_na_there(tmp_path):
    (tmp_path / "shape").mkdir()
    (tmp_path / "shape/shape_anno_all.txt").write_text("a.jpg 3 3 0 1 0 0 0 0 0 2 1 0\n")
    row = L.read_labels(tmp_path)["a.jpg"]
    assert row["sleeve_length"] == "long-sleeve" and row["hat"] == "yes" and row["neckline"] == "round"
    assert row["upper_pattern"] is None and set(row) == set(A.NAMES)
    assert L.read_labels(tmp_path / "nothing") == {}


@pytest.mark.parametrize("line, problem", [
    ("a.jpg 0 1\n", "expected an image name and 3 codes, found 2"),
    ("a.jpg 0 1 9 \n", "outer_pattern code '9'"),
    ("a.jpg 0 x 1\n", "lower_pattern code 'x'"),
])
def test_a_malformed_label_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "texture/pattern_ann.txt"
    path.parent.mkdir()
    path.write_text("ok.jpg 3 3 7\n\n" + line)
    with pytest.raises(UserError) as e:
        L.read_labels(tmp_path)
    assert f"{path}, line 3" in str(e.value) and problem in str(e.value)


def test_a_repeated_image_is_an_error(tmp_path):
    path = tmp_path / "texture/fabric_ann.txt"
    path.parent.mkdir()
    path.write_text("a.jpg 1 1 7\na.jpg 0 0 7\n")
    with pytest.raises(UserError, match="line 2: a.jpg is listed twice"):
        L.read_labels(tmp_path)


def test_synthetic_captions_state_exactly_their_labels():
    """Every caption form, parsed, gives the labels it was written from (those the grammar can
    state: 'no hat' and 'no outer clothing' are said by silence, as in the data set)."""
    rng = random.Random(3)
    forms = set()
    for _ in range(600):
        g = synthetic.random_garments(rng)
        forms.add(g.forms)
        stated = {k: v for k, v in synthetic.labels_for(g).items() if v is not None and v != "no"}
        assert parse_caption(synthetic.caption_for(g)) == stated, synthetic.caption_for(g)
    assert len({f[0] for f in forms}) == 4 and len({f[1] for f in forms}) == 3  # several sentence forms


def test_captions_name_no_hue_and_withheld_words_are_replaced():
    rng = random.Random(4)
    hues = {"red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "grey", "gray"}
    for _ in range(300):
        g = synthetic.random_garments(rng)
        caption = synthetic.caption_for(g)
        assert not hues & set(caption.lower().replace(".", " ").replace(",", " ").split())
        hidden = synthetic.caption_for(g, frozenset({"upper_pattern", "lower_pattern"}), "some")
        assert not {"striped", "lattice", "color block"} & set(parse_caption(hidden).values())
        assert hidden.count("pure color") == (1 if g.outer else 0)  # only the outer garment's, not withheld
        assert hidden.count("some patterns") == 2
        assert parse_caption(hidden)["sleeve_length"] == g.sleeve  # the other attributes stay

"""DeepFashion labels as data: the schema is the data set's current README, the label files round
trip and read the same however they were saved, malformed lines are named, the caption grammar
parser reads the data set's published examples and each of its sentence forms, and the synthetic
world's captions, labels and images agree."""

import random

import pytest

from fashion_lora import attributes as A
from fashion_lora import labels as L
from fashion_lora import synthetic
from fashion_lora.errors import UserError
from fashion_lora.grammar import parse_caption

# Published examples from DeepFashion-MultiModal's captions.json (issue 26).
EXAMPLES = [
    ("The upper clothing has long sleeves, cotton fabric and solid color patterns. The neckline of it is v-shape. "
     "The lower clothing is of long length. The fabric is denim and it has solid color patterns. This lady also "
     "wears an outer clothing, with cotton fabric and complicated patterns. This female is wearing a ring on her "
     "finger. This female has neckwear.",
     {"sleeve_length": "long-sleeve", "upper_fabric": "cotton", "upper_pattern": "pure color", "neckline": "V-shape",
      "lower_length": "long", "lower_fabric": "denim", "lower_pattern": "pure color", "outer_clothing": "yes",
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


# The data set's sentence forms (issue 34), with values of our own: each value read from its own
# phrase, the data set's words mapped to its label values.
FORMS = [
    # "sleeves cut off", "knitting", "plaid", "crew"
    ("His sweater has sleeves cut off, knitting fabric and plaid patterns. It has a crew neckline.",
     {"sleeve_length": "sleeveless", "upper_fabric": "knitted", "upper_pattern": "lattice", "neckline": "round"}),
    # "its fabric is mixed, and it has mixed patterns": mixed fabric is other; a mixed pattern says nothing
    ("The shirt this guy wears has medium sleeves, its fabric is mixed, and it has mixed patterns. The shirt has a "
     "standing neckline.",
     {"sleeve_length": "medium-sleeve", "upper_fabric": "other", "neckline": "standing"}),
    # upper and lower in one sentence: the patterns belong to the garment named before them
    ("This woman wears a long-sleeve blouse with striped patterns and a three-quarter skirt. The blouse is with "
     "chiffon fabric and its neckline is square. The skirt is with other fabric and solid color patterns.",
     {"sleeve_length": "long-sleeve", "upper_pattern": "striped", "lower_length": "three-quarter",
      "upper_fabric": "chiffon", "neckline": "square", "lower_fabric": "other", "lower_pattern": "pure color"}),
    ("The shorts the lady wears is of medium length. The shorts are with mixed fabric and pure color patterns.",
     {"lower_length": "medium short", "lower_fabric": "other", "lower_pattern": "pure color"}),
    # "tank tank top" (the sleeveless form), ", with" after the lower noun, "other patterns" (also written for NA)
    ("The gentleman wears a tank tank top with graphic patterns. The tank top is with cotton fabric. This man wears "
     "a long trousers, with denim fabric and other patterns. The outer clothing this person wears is with leather "
     "fabric and color block patterns.",
     {"sleeve_length": "sleeveless", "upper_pattern": "graphic", "upper_fabric": "cotton", "lower_length": "long",
      "lower_fabric": "denim", "outer_clothing": "yes", "outer_fabric": "leather", "outer_pattern": "color block"}),
    ("The pants the female wears is of three-point length. The pants are with furry fabric and floral patterns. "
     "There is an outer clothing with chiffon fabric and complicated patterns.",
     {"lower_length": "three-point", "lower_fabric": "furry", "lower_pattern": "floral", "outer_clothing": "yes",
      "outer_fabric": "chiffon", "outer_pattern": "other"}),
    ("This person has a pair of glasses on his hands or clothes. There is an accessory in his her neck. There is "
     "an accessory on her wrist. The lady wears a belt. The lady has a hat in her head.",
     {"glasses": "glasses in hand or clothes", "neckwear": "yes", "wrist_wearing": "yes",
      "waist_accessories": "belt", "hat": "yes"}),
    ("The lady wears sunglasses. This female has neckwear.", {"glasses": "sunglasses", "neckwear": "yes"}),
    ("The man wears a pair of eyeglasses. The person wears socks. The lady wears a ring.",
     {"glasses": "eyeglasses", "socks": "socks", "ring": "yes"}),
    ("The upper clothing has short sleeves, cotton fabric and other patterns. It has a suspenders neckline. The "
     "neckline of it is lapel.",  # two necklines: neither is stated
     {"sleeve_length": "short-sleeve", "upper_fabric": "cotton"}),
    ("The lower clothing is of long length. The fabric is denim and it has stripe patterns. His T-shirt has long "
     "sleeves, cotton fabric and graphic patterns. The neckline of the T-shirt is v-shape.",
     {"lower_length": "long", "lower_fabric": "denim", "lower_pattern": "striped", "sleeve_length": "long-sleeve",
      "upper_fabric": "cotton", "upper_pattern": "graphic", "neckline": "V-shape"}),
]


@pytest.mark.parametrize("caption, expected", FORMS)
def test_parser_reads_each_sentence_form(caption, expected):
    assert parse_caption(caption) == expected


def test_the_parser_never_states_the_cardigan_question():
    """'wears an outer clothing' says an outer garment is worn, not whether it is a cardigan."""
    for caption, _ in EXAMPLES + FORMS:
        assert "outer_cardigan" not in parse_caption(caption)
    assert parse_caption("The lady wears a cardigan with cotton fabric.")["outer_clothing"] == "yes"


# The code tables of DeepFashion-MultiModal's README (current version, 2023-01-18), as written there.
README_TABLES = {
    "sleeve_length": "0 sleeveless, 1 short-sleeve, 2 medium-sleeve, 3 long-sleeve, 4 not long-sleeve, 5 NA",
    "lower_length": "0 three-point, 1 medium short, 2 three-quarter, 3 long, 4 NA",
    "socks": "0 no, 1 socks, 2 leggings, 3 NA",
    "hat": "0 no, 1 yes, 2 NA",
    "glasses": "0 no, 1 eyeglasses, 2 sunglasses, 3 glasses in hand or clothes, 4 NA",
    "neckwear": "0 no, 1 yes, 2 NA",
    "wrist_wearing": "0 no, 1 yes, 2 NA",
    "ring": "0 no, 1 yes, 2 NA",
    "waist_accessories": "0 no, 1 belt, 2 have a clothing, 3 hidden, 4 NA",
    "neckline": "0 V-shape, 1 square, 2 round, 3 standing, 4 lapel, 5 suspenders, 6 NA",
    "outer_cardigan": "0 yes, 1 no, 2 NA",
    "covers_navel": "0 no, 1 yes, 2 NA",
    "fabric": "0 denim, 1 cotton, 2 leather, 3 furry, 4 knitted, 5 chiffon, 6 other, 7 NA",
    "pattern": "0 floral, 1 graphic, 2 striped, 3 pure color, 4 lattice, 5 other, 6 color block, 7 NA",
}


def test_the_schema_is_the_readmes_code_tables():
    def table(text):
        entries = [e.split(" ", 1) for e in text.split(", ")]
        assert [int(code) for code, _ in entries] == list(range(len(entries)))
        return tuple(name for _, name in entries)

    assert [a.name for a in A.SHAPE] == list(README_TABLES)[:12]  # the shape file's 12 columns, in order
    for attr in A.SHAPE:
        assert attr.values == table(README_TABLES[attr.name]), attr.name
    for attr in A.FABRIC:
        assert attr.values == table(README_TABLES["fabric"]), attr.name
    for attr in A.PATTERN:
        assert attr.values == table(README_TABLES["pattern"]), attr.name
    assert [a.name for a in A.FABRIC + A.PATTERN] == [f"{p}_{k}" for k in ("fabric", "pattern")
                                                      for p in ("upper", "lower", "outer")]


def test_parser_states_nothing_for_a_caption_outside_the_grammar():
    assert parse_caption("A photo.") == {}
    assert parse_caption("The lady wears a red dress.") == {}  # a garment, but no attribute stated


def test_label_files_round_trip(tmp_path):
    rng = random.Random(0)
    labels = {f"img_{i}.jpg": synthetic.labels_for(synthetic.random_garments(rng)) for i in range(30)}
    labels["img_na.jpg"] = {**dict.fromkeys(A.NAMES), "outer_clothing": "no"}  # every label NA: no outer garment
    # the last non-NA code of each; an outer fabric and pattern mean an outer garment is worn
    labels["img_all.jpg"] = {**{a.name: a.values[-2] for a in A.SCHEMA}, "outer_clothing": "yes"}
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
    assert row["outer_clothing"] is None  # no texture line: whether an outer garment is worn is unknown
    assert L.read_labels(tmp_path / "nothing") == {}


def test_neckline_codes_follow_the_current_readme(tmp_path):
    """Code 6 is NA (15,494 real lines: no neckline visible), 3 standing, 4 lapel, 5 suspenders; 7 is none."""
    shape = tmp_path / "shape/shape_anno_all.txt"
    shape.parent.mkdir()
    shape.write_text("".join(f"{c}.jpg 3 3 0 1 0 0 0 0 0 {c} 1 0\n" for c in range(7)))
    necklines = {name: row["neckline"] for name, row in L.read_labels(tmp_path).items()}
    assert necklines == {"0.jpg": "V-shape", "1.jpg": "square", "2.jpg": "round", "3.jpg": "standing",
                         "4.jpg": "lapel", "5.jpg": "suspenders", "6.jpg": None}
    shape.write_text("a.jpg 3 3 0 1 0 0 0 0 0 7 1 0\n")
    with pytest.raises(UserError, match=r"line 1, column 10 \(neckline\): code '7' is not one of 0..6"):
        L.read_labels(tmp_path)


def test_outer_clothing_is_derived_from_the_outer_fabric_and_pattern(tmp_path):
    texture = tmp_path / "texture"
    texture.mkdir()
    (texture / "fabric_ann.txt").write_text("worn.jpg 1 0 1\nbare.jpg 1 0 7\npatterned.jpg 1 0 7\n")
    (texture / "pattern_ann.txt").write_text("worn.jpg 3 3 7\nbare.jpg 3 3 7\npatterned.jpg 3 3 2\n")
    rows = L.read_labels(tmp_path)
    assert {n: r["outer_clothing"] for n, r in rows.items()} == {"worn.jpg": "yes", "bare.jpg": "no",
                                                               "patterned.jpg": "yes"}


def test_label_files_read_the_same_however_they_were_saved(tmp_path):
    """A byte-order mark, Windows or old Mac line ends, tabs, runs of spaces and blank lines
    change nothing: every line is read."""
    clean = tmp_path / "clean/texture/fabric_ann.txt"
    clean.parent.mkdir(parents=True)
    lines = ["a.jpg 1 0 7", "b.jpg 0 1 2", "c.jpg 6 6 6"]
    clean.write_text("\n".join(lines) + "\n")
    for variant, data in {"bom": "\ufeff" + "\r\n".join(lines) + "\r\n",
                          "mac": "\r".join(lines),
                          "spaces": "\n".join("  " + line.replace(" ", " \t ") + "   " for line in lines) + "\n\n \n"}.items():
        path = tmp_path / variant / "texture/fabric_ann.txt"
        path.parent.mkdir(parents=True)
        path.write_bytes(data.encode("utf-8"))
        assert L.read_labels(path.parent.parent) == L.read_labels(clean.parent.parent), variant
    assert len(L.read_labels(clean.parent.parent)) == 3


@pytest.mark.parametrize("line, problem", [
    ("a.jpg 0 1\n", "expected an image name and 3 codes, found 2"),
    ("a.jpg 0 1 9 \n", "column 3 (outer_pattern): code '9' is not one of 0..7"),
    ("a.jpg 0 x 1\n", "column 2 (lower_pattern): code 'x'"),
    (b"\xff.jpg 0 1 2\n", "not UTF-8 text"),
])
def test_a_malformed_label_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "texture/pattern_ann.txt"
    path.parent.mkdir()
    path.write_bytes(b"ok.jpg 3 3 7\n\n" + (line if isinstance(line, bytes) else line.encode()))
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

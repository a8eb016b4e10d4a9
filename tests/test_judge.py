"""The attribute judge and the metric built on it: labels joined by filter, a judge that must
beat the majority class on held-out images, and the metric on images whose attributes are known."""

import random
from dataclasses import replace

import pandas as pd
import pytest
import torch
from PIL import Image

from fashion_lora import attributes as A
from fashion_lora import judge as judges
from fashion_lora import synthetic
from fashion_lora.captions import load_captions
from fashion_lora.evaluation import attribute_reads, attribute_rows, kid, score_attributes
from fashion_lora.filtering import filter_entries, join_labels, sample_and_split, to_frame
from fashion_lora.labels import read_labels
from tests.helpers import small_params


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pd.DataFrame:
    """data/fashion_data.csv of a small synthetic set, made by the filter stage's functions."""
    raw = tmp_path_factory.mktemp("raw")
    synthetic.write_dataset(raw, 420, seed=11)
    settings = replace(small_params().filter, workers=1)
    captions = load_captions(raw / "captions.json")
    kept, _, _ = filter_entries(captions, raw / "images", settings)
    rows, counts = join_labels(sample_and_split(kept, 10_000, 0.2, seed=0), read_labels(raw / "labels"), set(captions))
    assert counts["from_caption"] >= 5 and counts["without"] == 0 and counts["caption_agreement"] == 1.0
    # every attribute the synthetic captions state agrees with its label (the default's filter report says so too)
    stated = {a: r for a, r in counts["attributes"].items() if r["stated"]}
    assert set(stated) == {"sleeve_length", "lower_length", "hat", "outer_clothing", "upper_fabric", "lower_fabric",
                           "outer_fabric", "upper_pattern", "lower_pattern", "outer_pattern"}
    assert all(r["agreement"] == 1.0 for r in stated.values())
    assert counts["attributes"]["neckline"]["na_labels"] == counts["from_file"]  # not modelled: NA on every line
    path = tmp_path_factory.mktemp("csv") / "fashion_data.csv"
    to_frame(rows, str(raw / "images")).to_csv(path, index=False)
    return pd.read_csv(path, keep_default_na=False, dtype=str)  # as the judge and evaluate stages read it


@pytest.fixture(scope="module")
def trained(data):
    settings = replace(small_params().judge, epochs=12, batch_size=32, min_items=10)
    return judges.train_judge(data[data.split == "train"], data[data.split == "val"], settings, 0, torch.device("cpu"))


def test_filter_joins_labels_and_fills_in_from_captions(data):
    assert list(data.columns[:5]) == ["image_name", "image_path", "caption", "split", "labels_from"]
    assert set(data.labels_from) == {"file", "caption"}
    from_file = data[data.labels_from == "file"]
    assert set(from_file.hat) == {"yes", "no"} and set(from_file.socks) == {"NA"}  # NA kept as NA
    parsed = data[data.labels_from == "caption"]
    assert (parsed.sleeve_length != "NA").all() and (parsed.hat != "no").all()  # a caption never says "no hat"


def test_an_unlabelled_image_outside_the_grammar_is_kept():
    rows, counts = join_labels([{"image_name": "x.jpg", "caption": "A photo of a person.", "split": "train"}], {},
                               {"x.jpg"})
    assert {k: counts[k] for k in ("from_file", "from_caption", "without", "caption_agreement")} == \
        {"from_file": 0, "from_caption": 0, "without": 1, "caption_agreement": None}
    df = to_frame(rows, "data/raw/images")
    assert len(df) == 1 and df.labels_from[0] == "none" and df.sleeve_length[0] == "NA"


def test_judge_beats_the_majority_class_on_held_out_images(trained, tmp_path):
    judge, feats = trained
    table = judge.report["attributes"]
    for attr in ("sleeve_length", "lower_length", "hat", "upper_pattern"):
        chance = table[attr]["chance"]
        assert table[attr]["accuracy"] >= chance + min(0.2, (1 - chance) / 2), (attr, table[attr])  # half the way up
    assert not table["socks"]["scored"] and "two labelled values" in table["socks"]["why"]
    assert "hat" in judge.scored and "socks" not in judge.scored
    judges.save(judge, feats, tmp_path / "judge")
    loaded, loaded_feats = judges.load(tmp_path / "judge")
    img = [Image.new("RGB", (64, 96), (200, 60, 60))]
    assert loaded.read(img)[0] == judge.read(img)[0] and torch.equal(loaded_feats, feats)
    assert loaded.scored == judge.scored


def test_metric_on_images_whose_attributes_are_known(data, trained):
    """The held-out photos as the "generated" images of their own captions score near the judge's
    ceiling; the same photos under other captions score near chance."""
    judge, feats = trained
    held = data[data.split == "val"].to_dict("records")
    images = [Image.open(r["image_path"]).convert("RGB") for r in held]
    reads, image_feats = judge.read(images)
    shuffled = list(range(len(held)))
    random.Random(0).shuffle(shuffled)
    reads_shuffled = {a: [v[i] for i in shuffled] for a, v in reads.items()}
    scores = score_attributes(held, {"base": reads_shuffled, "lora": reads}, 1, judge.scored,
                              judge.report["attributes"], {"upper_pattern"})
    assert scores and set(scores) <= set(judge.scored)
    for attr, row in scores.items():
        assert row["lora"] == pytest.approx(row["ceiling"], abs=0.02)  # exactly the images the ceiling was measured on
        assert row["base"] < row["lora"] - 0.1 and row["withheld"] == (attr == "upper_pattern")
    assert [r["attribute"] for r in attribute_rows(scores)] == list(scores)
    # KID: the held-out features against themselves ~0, against a flat image set clearly more
    _, flat = judge.read([Image.new("RGB", (64, 96), (128, 128, 128))] * 20)
    same, far = kid(image_feats, feats, 0)["mean"], kid(flat, feats, 0)["mean"]
    assert abs(same) < 0.1 * far, (same, far)


def test_score_counts_only_stated_attributes_and_chance_is_the_majority():
    items = [{"hat": "yes"}, {"hat": "NA"}, {"hat": "no"}, {"hat": "yes"}]
    reads = {"base": {"hat": ["no", "no", "yes", "no", "no", "no", "yes", "yes"]},
             "lora": {"hat": ["yes", "yes", "no", "no", "no", "no", "yes", "yes"]}}
    table = {"hat": {"accuracy": 0.95}}
    row = score_attributes(items, reads, 2, ["hat"], table, set())["hat"]
    # stated images: 0,1 (yes), 4,5 (no), 6,7 (yes); NA item (images 2,3) not scored
    assert row == {"base": round(4 / 6, 4), "lora": 1.0, "chance": round(4 / 6, 4), "ceiling": 0.95, "withheld": False,
                   "images": 6}
    # the per-image record: the same images, and its accuracy is the score's
    items = [dict(it, image_name=f"{k}.jpg") for k, it in enumerate(items)]
    table = attribute_reads(items, reads, 2, ["hat"], 7)
    assert len(table) == 2 * 6 and set(table.model) == {"base", "lora"} and "NA" not in set(table.stated)
    assert list(table[table.model == "base"].seed) == [7, 8, 7, 8, 7, 8]
    assert list(table[table.model == "base"].image_name) == ["0.jpg", "0.jpg", "2.jpg", "2.jpg", "3.jpg", "3.jpg"]
    for model in ("base", "lora"):
        rows = table[table.model == model]
        assert round((rows.stated == rows.read).mean(), 4) == row[model]


def test_without_labels_the_judge_scores_nothing(tmp_path):
    rows, _ = join_labels([{"image_name": f"{i}.jpg", "caption": "A photo of a person.", "split": split}
                           for i, split in enumerate(["train"] * 4 + ["val"] * 2)], {}, set())
    df = to_frame(rows, str(tmp_path))  # no images are read: there is nothing to learn
    judge, feats = judges.train_judge(df[df.split == "train"], df[df.split == "val"], small_params().judge, 0,
                                      torch.device("cpu"))
    assert judge.scored == [] and feats.shape[0] == 0
    assert "two labelled values" in judge.report["attributes"]["hat"]["why"]
    judges.save(judge, feats, tmp_path / "judge")
    assert judges.load(tmp_path / "judge")[0].scored == []


def test_an_attribute_read_badly_or_rarely_is_not_scored():
    settings = replace(small_params().judge, min_accuracy=0.9, min_items=3)
    held = pd.DataFrame([{**dict.fromkeys(A.NAMES, A.NA), "hat": h, "upper_fabric": f, "lower_fabric": lf}
                         for h, f, lf in [("yes", "denim", "NA"), ("no", "cotton", "NA"), ("no", "denim", "denim"),
                                          ("no", "denim", "cotton")]])
    reads = {"hat": ["yes", "no", "no", "no"], "upper_fabric": ["cotton", "cotton", "denim", "denim"],
             "lower_fabric": ["denim", "denim", "denim", "cotton"]}
    classes = {"hat": ["no", "yes"], "upper_fabric": ["cotton", "denim"], "lower_fabric": ["cotton", "denim"]}
    table = judges.score_table(classes, held, reads, settings)
    assert table["hat"] == {"items": 4, "accuracy": 1.0, "chance": 0.75, "scored": True}
    assert not table["upper_fabric"]["scored"] and "0.750 below judge.min_accuracy" in table["upper_fabric"]["why"]
    assert not table["lower_fabric"]["scored"] and "2 labelled held-out images" in table["lower_fabric"]["why"]
    assert not table["socks"]["scored"] and table["socks"]["items"] == 0

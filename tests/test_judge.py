"""The attribute judge and the metric built on it: labels joined by filter, a judge that must
beat the majority class on held-out images and is gated on balanced accuracy, held-out captions
chosen by value and scored on what they state, and the metric on images whose attributes are known."""

import random
from collections import Counter
from dataclasses import replace

import pandas as pd
import pytest
import torch
from PIL import Image

from fashion_lora import attributes as A
from fashion_lora import embedded
from fashion_lora import judge as judges
from fashion_lora.captions import load_captions
from fashion_lora.evaluation.choice import choose_items, stated_items
from fashion_lora.evaluation.drawing import Drawn
from fashion_lora.evaluation.scoring import confusion, kid, macros, reads_table, score_attributes
from fashion_lora.filtering import filter_entries, join_labels, sample_and_split, to_frame
from fashion_lora.labels import read_labels
from tests.helpers import small_params


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pd.DataFrame:
    """data/fashion_data.csv of a small synthetic set, made by the filter stage's functions."""
    raw = tmp_path_factory.mktemp("raw")
    embedded.write_dataset(raw, 420, seed=11)
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
    settings = replace(small_params().judge, epochs=12, batch_size=32, min_items=4)
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
        chance = table[attr]["majority"]
        assert table[attr]["accuracy"] >= chance + min(0.2, (1 - chance) / 2), (attr, table[attr])  # half the way up
        assert table[attr]["balanced_accuracy"] > table[attr]["chance"] + 0.2, (attr, table[attr])
    assert not table["socks"]["scored"] and "two labelled values" in table["socks"]["why"]
    assert "hat" in judge.scored and "socks" not in judge.scored
    assert judge.scored_values()["upper_pattern"] == ["color block", "lattice", "pure color", "striped"]
    judges.save(judge, feats, tmp_path / "judge")
    loaded, loaded_feats = judges.load(tmp_path / "judge")
    img = [Image.new("RGB", (64, 96), (200, 60, 60))]
    assert loaded.read(img)[0] == judge.read(img)[0] and torch.equal(loaded_feats, feats)
    assert loaded.scored == judge.scored


def _photos_as_drawn(held: list[dict], judge, shuffle: bool) -> Drawn:
    """The held-out photos as the "generated" images of their own captions (lora), or of other
    captions (base: the same photos shuffled), one seed each."""
    images = [Image.open(r["image_path"]).convert("RGB") for r in held]
    order = list(range(len(held)))
    random.Random(0).shuffle(order)
    base = [images[i] for i in order] if shuffle else images
    reads = {m: judge.read(imgs)[0] for m, imgs in (("base", base), ("lora", images))}
    return Drawn(1, {"base": base, "lora": images}, reads, {}, {})


def test_metric_on_images_whose_attributes_are_known(data, trained):
    """The held-out photos as the generated images of their own captions score at the judge's
    ceiling on what their captions state; the same photos under other captions near chance."""
    judge, feats = trained
    items, left_out = stated_items(data, judge.scored_values())
    assert items and set(left_out.values()) == {0}  # the synthetic captions state their labels exactly
    by_name = {r["image_name"]: r for r in data.to_dict("records")}
    drawn = _photos_as_drawn([by_name[it["image_name"]] for it in items], judge, shuffle=True)
    table = reads_table(items, drawn, 0)
    scores = score_attributes(table, judge.report["attributes"], {"upper_pattern"})
    assert scores and set(scores) <= set(judge.scored)
    for attr, row in scores.items():
        if len(row["values"]) < 2:
            assert row["chance"] == 1.0 and attr in ("hat", "outer_clothing")  # captions say only "yes"
            continue
        # the photos the ceiling was measured on (one per distinct caption here)
        assert row["lora"] == pytest.approx(row["ceiling"], abs=0.1), (attr, row)
        assert row["base"] < row["lora"] - 0.1 and row["withheld"] == (attr == "upper_pattern")
    balanced, plain = macros(scores)
    assert balanced["lora"] > balanced["base"] and plain["withheld_lora"] == scores["upper_pattern"]["lora_accuracy"]
    # KID: the held-out features against themselves ~0, against a flat image set clearly more
    _, image_feats = judge.read(drawn.images["lora"])
    _, flat = judge.read([Image.new("RGB", (64, 96), (128, 128, 128))] * 20)
    same, far = kid(judge.read([Image.open(r["image_path"]) for r in data[data.split == "val"].to_dict("records")])[1],
                    feats, 0)["mean"], kid(flat, feats, 0)["mean"]
    assert abs(same) < 0.1 * far, (same, far)


def _items(asks: list[dict]) -> list[dict]:
    return [{"image_name": f"{k}.jpg", "caption": f"caption {k}", "asks": a} for k, a in enumerate(asks)]


def _drawn(reads: dict[str, dict[str, list[str]]], seeds: int) -> Drawn:
    n = len(next(iter(reads["base"].values())))
    blank = [Image.new("RGB", (8, 12))] * n
    return Drawn(seeds, {"base": blank, "lora": blank}, reads, {}, {})


def test_balanced_accuracy_of_a_majority_reader_is_its_chance():
    """Asked 8 pure color, 1 lattice, 1 striped: a model read as pure color every time is 0.8
    accurate but balanced 1/3, exactly chance; one that draws each value asked is balanced 1."""
    asks = ["pure color"] * 8 + ["lattice", "striped"]
    items = _items([{"upper_pattern": v} for v in asks])
    table = reads_table(items, _drawn({"base": {"upper_pattern": ["pure color"] * 10},
                                       "lora": {"upper_pattern": asks}}, 1), 0)
    judge_table = {"upper_pattern": {"recall": {"pure color": 1.0, "lattice": 0.9, "striped": 0.8, "floral": 0.1}}}
    row = score_attributes(table, judge_table, {"upper_pattern"})["upper_pattern"]
    assert row["base_accuracy"] == 0.8 and row["majority"] == 0.8
    assert row["base"] == row["chance"] == round(1 / 3, 4) and row["lora"] == 1.0
    assert row["ceiling"] == 0.9  # the judge's held-out recall over the values asked (not floral)
    assert row["values"] == {"lattice": 1, "pure color": 8, "striped": 1}
    assert row["recall"]["base"] == {"lattice": 0.0, "pure color": 1.0, "striped": 0.0}
    matrix = confusion(table)["upper_pattern"]
    assert matrix["base"] == {"lattice": {"pure color": 1}, "pure color": {"pure color": 8}, "striped": {"pure color": 1}}


def test_an_unstated_attribute_is_not_scored_and_a_disagreement_is_left_out():
    """A caption that never mentions a hat asks for no hat, whatever its label says; a caption
    whose words and label disagree is left out of that attribute and counted."""
    rows = [{"image_name": "a.jpg", "split": "val", "caption": "The upper clothing has long sleeves, cotton fabric and "
             "solid color patterns.", "hat": "no", "sleeve_length": "long-sleeve", "upper_pattern": "pure color"},
            {"image_name": "b.jpg", "split": "val", "caption": "The upper clothing has short sleeves, cotton fabric "
             "and striped patterns. This lady wears a hat.", "hat": "yes", "sleeve_length": "long-sleeve",
             "upper_pattern": "NA"},
            {"image_name": "c.jpg", "split": "train", "caption": "This lady wears a hat.", "hat": "yes",
             "sleeve_length": "NA", "upper_pattern": "NA"}]
    df = pd.DataFrame([{**dict.fromkeys(A.NAMES, A.NA), **r} for r in rows])
    scored = {"hat": ["no", "yes"], "sleeve_length": ["long-sleeve", "short-sleeve"],
              "upper_pattern": ["pure color", "striped"]}
    items, left_out = stated_items(df, scored)
    assert [it["asks"] for it in items] == [{"sleeve_length": "long-sleeve", "upper_pattern": "pure color"},
                                            {"hat": "yes", "upper_pattern": "striped"}]  # NA label: the words count
    assert left_out == {"hat": 0, "sleeve_length": 1, "upper_pattern": 0}  # b says short, its label long


def test_stratified_choice_asks_for_every_value_even_the_rare_ones():
    """On DeepFashion-like data (a lattice on 2 captions of 100) every value is asked for by
    `per_value` captions or all that state it; seeded, and the same for the same seed."""
    rng = random.Random(1)
    values = ["pure color"] * 80 + ["striped"] * 10 + ["color block"] * 8 + ["lattice"] * 2
    rng.shuffle(values)
    items = _items([{"upper_pattern": v, "hat": "yes"} if k % 10 == 0 else {"upper_pattern": v}
                    for k, v in enumerate(values)])
    chosen = choose_items(items, 4, seed=3)
    asked = Counter(pair for it in chosen for pair in it["asks"].items())
    assert asked[("upper_pattern", "lattice")] == 2 and asked[("upper_pattern", "color block")] >= 4
    assert asked[("upper_pattern", "striped")] >= 4 and asked[("hat", "yes")] >= 4
    assert len(chosen) <= 4 * 5 and [it["image_name"] for it in chosen] == sorted(it["image_name"] for it in chosen)
    assert choose_items(items, 4, seed=3) == chosen and choose_items(items, 4, seed=4) != chosen
    # a random sample of as many captions misses the lattice most of the time
    misses = sum(not any(it["asks"]["upper_pattern"] == "lattice" for it in random.Random(s).sample(items, len(chosen)))
                 for s in range(200))
    assert misses > 100


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


def test_the_gate_is_balanced_accuracy_and_refuses_a_majority_reader():
    settings = replace(small_params().judge, min_balanced_accuracy=0.8, min_items=3)
    truth = {"glasses": ["no"] * 46 + ["sunglasses"] * 4,  # 92% "no", as DeepFashion's 98%
             "hat": ["no"] * 40 + ["yes"] * 10,
             "upper_fabric": ["cotton"] * 40 + ["denim"] * 8 + ["leather"] * 2}
    held = pd.DataFrame([{**dict.fromkeys(A.NAMES, A.NA), **{a: v[i] for a, v in truth.items()}} for i in range(50)])
    reads = {"glasses": ["no"] * 50,  # always the majority: plain accuracy 0.92
             "hat": ["no"] * 38 + ["yes"] * 2 + ["yes"] * 8 + ["no"] * 2,  # recall 0.95 / 0.8: balanced 0.875
             "upper_fabric": ["cotton"] * 40 + ["denim"] * 6 + ["cotton"] * 2 + ["cotton"] * 2}
    classes = {"glasses": ["no", "sunglasses"], "hat": ["no", "yes"], "upper_fabric": ["cotton", "denim", "leather"]}
    table = judges.score_table(classes, held, reads, settings)
    assert table["glasses"]["accuracy"] == 0.92 and table["glasses"]["balanced_accuracy"] == 0.5 == table["glasses"]["chance"]
    assert not table["glasses"]["scored"] and "0.500 below judge.min_balanced_accuracy" in table["glasses"]["why"]
    assert table["hat"]["scored"] and table["hat"]["balanced_accuracy"] == 0.875
    # leather has 2 held-out images, fewer than min_items: scored on cotton and denim only
    assert table["upper_fabric"]["scored_values"] == ["cotton", "denim"]
    assert table["upper_fabric"]["balanced_accuracy"] == 0.875 and table["upper_fabric"]["recall"]["leather"] == 0.0
    assert not table["socks"]["scored"] and table["socks"]["items"] == 0
    # with no threshold at all a majority reader is still refused
    lax = judges.score_table(classes, held, reads, replace(settings, min_balanced_accuracy=0.0))
    assert not lax["glasses"]["scored"] and "majority" in lax["glasses"]["why"]
    few = judges.score_table(classes, held, reads, replace(settings, min_items=5))
    assert not few["glasses"]["scored"] and "fewer than two values" in few["glasses"]["why"]


def test_judge_images_are_one_uint8_buffer_within_the_estimate(tmp_path):
    """load_images holds N x 3 x H x W bytes, decoded by threads, equal to the float inputs."""
    from fashion_lora.judge import buffer_bytes, load_images, to_input

    paths = []
    for k in range(12):
        path = tmp_path / f"{k}.jpg"
        Image.new("RGB", (75 + k, 110), (20 * k, 100, 200 - 10 * k)).save(path)
        paths.append(str(path))
    x = load_images(paths, (96, 64), "test", workers=3)
    assert x.dtype == torch.uint8 and x.shape == (12, 3, 96, 64)
    assert x.element_size() * x.nelement() == buffer_bytes(12, (96, 64))
    assert torch.equal(x.float() / 255, to_input([Image.open(p) for p in paths], (96, 64)))


def test_a_pretrained_backbone_judge_on_a_tiny_random_clip(data, tmp_path):
    """`judge.backbone`: a local CLIP checkpoint (a whole CLIP, as FashionCLIP's is; tiny and random
    here, so shapes and wiring only): frozen features under linear heads, saved with the judge so
    evaluate loads it offline, its features what KID compares."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    settings = replace(small_params().judge, backbone=str(tmp_path / "clip"), epochs=2, min_items=4)
    train, held = data[data.split == "train"], data[data.split == "val"]
    judge, feats = judges.train_judge(train, held, settings, 0, torch.device("cpu"))
    assert isinstance(judge.net, judges.BackboneNet) and feats.shape == (len(held), 16)
    assert judge.report["backbone"] == settings.backbone
    assert set(judge.net.classes) >= {"sleeve_length", "upper_pattern"}
    fresh = judges.load_backbone(str(tmp_path / "clip")).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in judge.net.backbone.state_dict().items())  # only the heads trained
    judges.save(judge, feats, tmp_path / "judge")
    assert (tmp_path / "judge/backbone/config.json").is_file()
    loaded, loaded_feats = judges.load(tmp_path / "judge")
    img = [Image.new("RGB", (64, 96), (200, 60, 60)), Image.new("RGB", (64, 96), (20, 60, 160))]
    reads, f = loaded.read(img)
    assert reads == judge.read(img)[0] and torch.allclose(f, judge.read(img)[1]) and torch.equal(loaded_feats, feats)
    with pytest.raises(judges.UserError, match="judge.backbone"):
        judges.load_backbone(str(tmp_path / "nothing-here"))

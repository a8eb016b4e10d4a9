import random

import numpy as np
import pytest
from PIL import Image

from fashion_lora import embedded, figures, synthetic


def test_generate_is_seeded_and_has_every_bad_kind(tmp_path):
    a = embedded.write_dataset(tmp_path / "a", 60, seed=7)
    b = embedded.write_dataset(tmp_path / "b", 60, seed=7)
    assert a["entries"] == b["entries"]
    files_a = sorted(p.name for p in (tmp_path / "a/images").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b/images").iterdir())
    for name in files_a:
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()
    assert all(a["bad"][k] >= 1 for k in embedded.BAD_KINDS)


def test_names_are_deepfashion_style_with_several_views(tmp_path):
    s = embedded.write_dataset(tmp_path, 60, seed=1)
    names = [e["image_name"] for e in s["entries"]]
    import re

    pat = re.compile(r"^(MEN|WOMEN)-\w+-id_\d{8}-\d{2}_\d_(front|side|back|full)\.(jpg|png)$")
    assert all(pat.match(n) for n in names), names[:3]
    ids = [re.search(r"id_\d{8}", n).group(0) for n in names]
    assert len(set(ids)) < len(ids)  # some products have several views


def test_labels_files_and_images_show_the_attributes(tmp_path):
    """The labels files hold each entry's attributes (but for the few left unlabelled on purpose),
    and the images show them: the hat above the head, the trouser hem at the ankle or above it."""
    from fashion_lora.labels import read_labels

    s = embedded.write_dataset(tmp_path, 60, seed=3)
    labels = read_labels(tmp_path / "labels")
    assert s["unlabeled"] == 1 and len(labels) == 59
    checked = 0
    for e in s["entries"]:
        if e["unlabeled"]:
            assert e["image_name"] not in labels
            continue
        assert labels[e["image_name"]]["sleeve_length"] == e["sleeve"]
        assert labels[e["image_name"]]["lower_pattern"] == e["lower_pattern"]
        if e["bad"] or e["image_name"].endswith("side.jpg"):
            continue
        img = np.asarray(Image.open(tmp_path / "images" / e["image_name"]).convert("RGB"), dtype=float)
        h, w = img.shape[:2]
        top = img[int(0.01 * h):int(0.05 * h), w // 2 - 3:w // 2 + 3]  # where a hat's crown sits
        assert (top.mean() < 100) == e["hat"], e  # the crown is dark; the background is light
        checked += 1
    assert checked >= 20


def test_render_portrait_proportions():
    g = synthetic.random_garments(random.Random(0))
    img = figures.render(g, (300, 441), "front", random.Random(0))
    assert img.size == (300, 441)
    assert np.asarray(img).std() > 10  # not a blank canvas


def _accent_mask(g, seed=5, size=(300, 441)):
    """Where the lower pattern of `g` differs from the same figure in pure colour: its accent
    pixels (render draws the same geometry and colours from the same rng either way)."""
    from dataclasses import replace

    plain = replace(g, lower_pattern="pure color")
    a = np.asarray(figures.render(g, size, "front", random.Random(seed)), dtype=int)
    b = np.asarray(figures.render(plain, size, "front", random.Random(seed)), dtype=int)
    return np.abs(a - b).sum(-1) > 60


def _bands(rows: np.ndarray) -> int:
    return int(rows[0]) + int(np.sum(rows[1:] & ~rows[:-1]))


def test_lower_patterns_stay_distinct_on_shorts_and_legs():
    """The lower garment's patterns are drawn so that they differ where it is smallest: striped
    shorts carry two bands (one would read as a colour block), and a lattice runs a vertical
    line down the same place of each leg on every figure (lines counted from the image's edge
    fell anywhere on a leg, depending on where the figure stood)."""
    from dataclasses import replace

    base = replace(synthetic.random_garments(random.Random(0)), lower_length="three-point", outer=False, outer_fabric="")
    h, u = 441, 4.41
    shorts = slice(int(0.56 * h), int(0.74 * h))  # below the waist, above the hem
    assert _bands(_accent_mask(replace(base, lower_pattern="striped"))[shorts].any(axis=1)) >= 2
    assert _bands(_accent_mask(replace(base, lower_pattern="color block"))[shorts].any(axis=1)) == 1
    offsets = []
    for seed in range(6):  # the figure's position varies with the rng
        g = replace(base, lower_length="long", lower_pattern="lattice")
        cover = _accent_mask(g, seed)[int(0.56 * h):int(0.93 * h)].mean(axis=0)  # share of rows in accent
        legs = np.flatnonzero(_accent_mask(replace(g, lower_pattern="color block"), seed)[int(0.93 * h) - 3])
        centre = (legs.min() + legs.max()) / 2  # the gap between the legs
        line = np.flatnonzero(cover > 0.9)  # columns in accent from the waist to the hem
        left, right = line[line < centre], line[line > centre]
        assert len(left) and len(right), seed
        offsets += [(centre - left.mean()) / u, (right.mean() - centre) / u]
    assert max(offsets) - min(offsets) < 2, offsets


def test_deepfashion_frequencies_draw_the_data_sets_proportions():
    """`data.synthetic.frequencies: deepfashion`: the drawn values in DeepFashion's proportions
    (among the values this world draws), e.g. 84% of upper garments pure color, 92% of lower ones."""
    rng = random.Random(0)
    draws = [synthetic.random_garments(rng, "deepfashion") for _ in range(4000)]

    def share(attr, value):
        return sum(getattr(g, attr) == value for g in draws) / len(draws)

    def expected(key, value):
        counts = synthetic.DEEPFASHION[key]
        return counts[value] / sum(counts.values())

    assert share("upper_pattern", "pure color") == pytest.approx(expected("upper_pattern", "pure color"), abs=0.03)
    assert share("lower_pattern", "pure color") == pytest.approx(expected("lower_pattern", "pure color"), abs=0.03)
    assert share("upper_fabric", "cotton") == pytest.approx(0.79, abs=0.03)
    assert share("lower_length", "three-quarter") < 0.05 and share("sleeve", "sleeveless") > 0.35
    assert share("outer", True) == pytest.approx(5600 / 44096, abs=0.02)
    assert share("hat", True) == pytest.approx(0.12, abs=0.02)
    assert synthetic.random_garments(random.Random(0)) == synthetic.random_garments(random.Random(0), "uniform")
    with pytest.raises(ValueError, match="uniform or deepfashion"):
        synthetic.random_garments(rng, "balanced")

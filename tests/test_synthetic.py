import random

import numpy as np
from PIL import Image

from fashion_lora import synthetic


def test_generate_is_seeded_and_has_every_bad_kind(tmp_path):
    a = synthetic.write_dataset(tmp_path / "a", 60, seed=7)
    b = synthetic.write_dataset(tmp_path / "b", 60, seed=7)
    assert a["entries"] == b["entries"]
    files_a = sorted(p.name for p in (tmp_path / "a/images").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b/images").iterdir())
    for name in files_a:
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()
    assert all(a["bad"][k] >= 1 for k in synthetic.BAD_KINDS)


def test_names_are_deepfashion_style_with_several_views(tmp_path):
    s = synthetic.write_dataset(tmp_path, 60, seed=1)
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

    s = synthetic.write_dataset(tmp_path, 60, seed=3)
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
    img = synthetic.render(g, (300, 441), "front", random.Random(0))
    assert img.size == (300, 441)
    assert np.asarray(img).std() > 10  # not a blank canvas

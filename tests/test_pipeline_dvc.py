"""End-to-end: the real `dvc` CLI on the real stages, in a temporary git copy of the repo."""

import json
import re

import pandas as pd
import pytest

from fashion_lora.filtering import product_id
from tests.conftest import SMALL, dvc, git, make_repo, write_params

pytestmark = pytest.mark.slow
STAGES = ("download", "base_model", "filter", "precompute", "train", "evaluate", "generate", "report")


def ran(proc) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", proc.stdout))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = make_repo(tmp_path_factory.mktemp("repo"), SMALL)
    proc = dvc(r, "repro")
    assert ran(proc) == set(STAGES)
    return r


def test_outputs_are_complete_and_honest(repo):
    df = pd.read_csv(repo / "data/fashion_data.csv", keep_default_na=False)
    assert list(df.columns) == ["image_name", "image_path", "caption", "split"]
    assert (df.caption.str.len() >= 10).all()
    assert all((repo / p).is_file() for p in df.image_path)
    train_ids = {product_id(n) for n in df[df.split == "train"].image_name}
    val_ids = {product_id(n) for n in df[df.split == "val"].image_name}
    assert train_ids and val_ids and not train_ids & val_ids
    report = json.loads((repo / "reports/filter.json").read_text())
    source = json.loads((repo / "data/raw/source.json").read_text())
    bad = source["deliberately_bad"]
    d = report["dropped"]
    # every deliberately bad entry is accounted for under its reason
    assert d["too_small"] == bad["too_small"] and d["caption_too_short"] == bad["short_caption"]
    assert d["undecodable"] == bad["truncated"] and d["not_an_image"] == bad["not_an_image"]
    assert d["not_rgb"] == bad["grayscale"] + bad["rgba"]
    assert d["missing_image"] == bad["missing_image"] and d["missing_caption"] == bad["missing_caption"]
    assert report["kept"] == len(df) == SMALL["data.synthetic.count"] - sum(bad.values())
    pre = json.loads((repo / "reports/precompute.json").read_text())
    assert pre["encoded"] == len(df) and pre["images_per_second"] > 0
    assert (repo / "models/lora/pytorch_lora_weights.safetensors").is_file()
    assert (repo / "models/lora/fashion_lora_kohya.safetensors").is_file()
    tr = json.loads((repo / "reports/train_report.json").read_text())
    assert tr["steps"] == SMALL["train.max_steps"] and tr["best_val"]["mse"] < tr["base_val"]["mse"]
    ev = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert ev["lora"]["mse"] < ev["base"]["mse"]
    n_img = len(SMALL["generate.prompts"]) * len(SMALL["generate.steps"]) * 2
    assert len(list((repo / "reports/generate/images").glob("*.png"))) == n_img
    assert (repo / "reports/generate/grid.png").is_file()


def test_noop_repro_and_clean_status(repo):
    proc = dvc(repo, "repro")
    assert ran(proc) == set()
    status = dvc(repo, "status")
    assert "up to date" in status.stdout
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "run")
    assert git(repo, "status", "--porcelain").stdout.strip() == ""  # no stray files for git


def test_metrics_show_base_vs_lora(repo):
    out = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    flat = json.dumps(out)
    assert "lora" in flat and "base" in flat and "mse" in flat


def test_param_changes_rerun_only_downstream(repo):
    write_params(repo, {"train.lora.rank": 4})
    assert ran(dvc(repo, "repro")) == {"train", "evaluate", "generate", "report"}
    write_params(repo, {"generate.guidance_scale": 7.5})
    assert ran(dvc(repo, "repro")) == {"evaluate", "generate", "report"}
    write_params(repo, {"filter.min_caption_length": 12})
    stages = ran(dvc(repo, "repro"))
    assert "filter" in stages and not stages & {"download", "base_model"}
    write_params(repo, {"precompute.resolution": 32, "generate.height": 32, "generate.width": 32})
    assert ran(dvc(repo, "repro")) == {"precompute", "train", "evaluate", "generate", "report"}


def test_editing_stage_code_reruns_it(repo):
    with open(repo / "stages/generate.py", "a") as f:
        f.write("\n# touched\n")
    assert ran(dvc(repo, "repro")) == {"generate", "report"}

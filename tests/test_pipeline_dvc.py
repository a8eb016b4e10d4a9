"""End-to-end: the real `dvc` CLI on the real stages, in a temporary git copy of the repo."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fashion_lora.filtering import product_id
from tests.helpers import SMALL, back_to_head, copy_run, dvc, env, git, ran, render_offline, run, write_params

# Copies of the session's small pipeline: on one xdist worker, which builds it once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("small_run")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, small_run):
    """The session's small completed run (every stage ran from scratch), copied for this module."""
    return copy_run(small_run, tmp_path_factory.mktemp("repo") / "repo")


def test_outputs_are_complete_and_honest(repo):
    df = pd.read_csv(repo / "data/fashion_data.csv", keep_default_na=False)
    assert list(df.columns[:5]) == ["image_name", "image_path", "caption", "split", "labels_from"]
    assert {"sleeve_length", "upper_pattern", "outer_clothing", "outer_cardigan", "hat"} <= set(df.columns)
    assert set(df.labels_from) <= {"file", "caption"} and (df.sleeve_length != "NA").all()
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
    compared = {a: r["agreement"] for a, r in report["labels"]["attributes"].items() if r["compared"]}
    assert compared and set(compared.values()) == {1.0}  # the synthetic captions state their labels exactly
    # train.max_token_length: auto -> the window filter measured, recorded in the adapter
    tokens = json.loads((repo / "reports/caption_tokens.json").read_text())
    assert tokens == report["caption_tokens"] and tokens["max_token_length"] == 77 and tokens["over_77"] == 0
    pre = json.loads((repo / "reports/precompute.json").read_text())
    assert pre["encoded"] == len(df) and pre["images_per_second"] > 0
    # the synthetic portraits (aspect 0.68) go whole into the 64x96 bucket
    assert pre["train_bucket"] == "64x96" and pre["area_kept"]["min"] > 0.95
    assert (repo / "models/lora/pytorch_lora_weights.safetensors").is_file()
    assert (repo / "models/lora/fashion_lora_kohya.safetensors").is_file()
    tr = json.loads((repo / "reports/train_report.json").read_text())
    assert tr["steps"] == SMALL["train.max_steps"] and tr["best_val"]["mse"] < tr["base_val"]["mse"]
    from fashion_lora.lora import token_window

    assert tr["params"]["max_token_length"] == 77
    assert token_window(repo / "models/lora/pytorch_lora_weights.safetensors") == 77
    ev = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert ev["lora"]["mse"] < ev["base"]["mse"]
    judge = json.loads((repo / "reports/judge.json").read_text())
    scored = [a for a, r in judge["attributes"].items() if r["scored"]]
    assert scored and set(ev["attributes"]) <= set(scored)  # the judge's attributes, read from its models/judge
    assert ev["attribute_images_per_model"] == ev["attribute_captions"] * 2
    for attr, row in ev["attributes"].items():  # every value the judge scores that a held-out caption states is asked
        assert set(row["values"]) <= set(judge["attributes"][attr]["scored_values"]) and min(row["values"].values()) >= 2
    assert (repo / "models/judge/judge.safetensors").is_file() and (repo / "reports/evaluate/attribute_sheet.png").is_file()
    rows = json.loads((repo / "reports/evaluate/attributes.json").read_text())
    assert [r["attribute"] for r in rows] == list(ev["attributes"])
    reads = pd.read_csv(repo / "reports/evaluate/attribute_reads.csv", keep_default_na=False)
    for attr, row in ev["attributes"].items():  # the per-image record adds up to the metric
        lora = reads[(reads.attribute == attr) & (reads.model == "lora")]
        assert len(lora) == row["images"] and round((lora.stated == lora.read).mean(), 4) == row["lora_accuracy"]
    confusion = json.loads((repo / "reports/evaluate/confusion.json").read_text())
    assert set(confusion) == set(ev["attributes"])
    assert len(json.loads((repo / "reports/evaluate/confusion_lora.json").read_text())) == (reads.model == "lora").sum()
    n_img = len(SMALL["generate.prompts"]) * len(SMALL["generate.steps"]) * 2
    pngs = list((repo / "reports/generate/images").glob("*.png"))
    assert len(pngs) == n_img and all(Image.open(f).size == (64, 96) for f in pngs)  # generate.height/width auto
    assert (repo / "reports/generate/grid.png").is_file()


def test_disk_estimate_matches_what_the_run_wrote(repo):
    """reports/disk.json, the check stage's estimate, against the bytes the run left in the
    workspace and in DVC's cache: within 25% each (issue 27)."""
    def size(path: Path) -> int:
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files)

    report = json.loads((repo / "reports/disk.json").read_text())
    written = sum(size(repo / k) for k in report["outputs"])
    assert abs(report["workspace"] - written) <= 0.25 * written, (report, written)
    cached = size(repo / ".dvc/cache")
    assert report["cache_type"] == "reflink,copy" and abs(report["cache"] - cached) <= 0.25 * cached, (report, cached)


def test_noop_repro_and_clean_status(repo):
    proc = dvc(repo, "repro")
    assert ran(proc) == set()
    status = dvc(repo, "status")
    assert "up to date" in status.stdout
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "run")
    assert git(repo, "status", "--porcelain").stdout.strip() == ""  # no stray files for git


def _tree_bytes(root: Path) -> dict:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("key,value,named", [
    ("train.lora.rnak", 4, "train.lora.rnak"),                      # unknown key
    ("train.lora.rank", "four", "train.lora.rank"),                 # wrong type
    ("train.lora.rank", -4, "train.lora.rank"),                     # out of range
    ("data.local.images", "/no/such/folder", "data.local.images"),  # missing input path
    ("model.base", "/no/such/model", "model.base"),
])
def test_bad_param_deletes_no_output(repo, key, value, named):
    """DVC removes a stage's outs before running it; the check stage refuses bad params first."""
    before = {rel: _tree_bytes(repo / rel) for rel in ("data/raw", "models/lora", "reports/generate")}
    overrides = {key: value, **({"data.source": "local", "data.local.captions": "/no/such.json"}
                                if key.startswith("data.local") else {})}
    write_params(repo, overrides)
    try:
        proc = dvc(repo, "repro", check=False)
        assert proc.returncode != 0 and named in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert ran(proc) == {"check"}
        assert "deleted" not in dvc(repo, "status").stdout
        for rel, files in before.items():
            assert _tree_bytes(repo / rel) == files, rel
    finally:
        git(repo, "checkout", "--", "params.yaml")
    # params back as they were: even the check stage is up to date (its file was never touched)
    assert ran(dvc(repo, "repro")) == set()


def test_rerun_of_finished_train_leaves_identical_reports(repo):
    keep = ("models/lora", "reports/train")
    before = {rel: _tree_bytes(repo / rel) for rel in keep}
    report = (repo / "reports/train_report.json").read_bytes()
    proc = dvc(repo, "repro", "-f", "-s", "train")
    assert "writing its adapter and reports again instead of training" in proc.stdout + proc.stderr
    assert (repo / "reports/train_report.json").read_bytes() == report
    for rel, files in before.items():
        assert _tree_bytes(repo / rel) == files, rel
    assert "up to date" in dvc(repo, "status").stdout


def test_ctrl_c_during_exp_run_then_same_command_resumes(repo):
    """Ctrl-C (SIGINT to the foreground process group) in `dvc exp run -S ...`: one line saying
    where train stopped, no traceback; the same command resumes from the checkpoint."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-S", "train.max_steps=40", "-S", "train.checkpoint_every=10",
           "-S", "train.val_every=20"]
    log = repo / "interrupted.log"
    with open(log, "w") as f:
        # A terminal's Ctrl-C reaches processes whose SIGINT is at its default. A test run started
        # in the background of a non-interactive shell inherits SIGINT *ignored* (bash does that to
        # `cmd &`), and every process below it would then ignore this test's SIGINT (seen here).
        proc = subprocess.Popen(cmd, cwd=repo, env=env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    ckpt = repo / "models/checkpoints/checkpoint.pt"
    try:
        # Wait for this run's checkpoint at step >= 10 (written atomically by the stage): the
        # interrupt then always has a checkpoint to report, whatever the log's timing.
        while not (ckpt.is_file() and ckpt.stat().st_mtime >= t0
                   and torch.load(ckpt, weights_only=True)["step"] >= 10):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() - t0 < 300, "training never reached step 10"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    log.unlink()
    assert "Traceback" not in text, text[-3000:]
    stopped = re.findall(r"train: stopped at step (\d+) of 40; last checkpoint at step (\d+)", text)
    assert stopped, text[-3000:]
    at_checkpoint = int(stopped[0][1])
    again = run(cmd, repo)
    out = again.stdout + again.stderr
    assert f"resuming from models/checkpoints/checkpoint.pt at step {at_checkpoint}" in out, out[-3000:]
    report = json.loads((repo / "reports/train_report.json").read_text())
    assert report["steps"] == 40 and report["resumed_from_step"] == at_checkpoint
    back_to_head(repo)


def test_dvc_doctor_and_no_analytics(repo):
    proc = dvc(repo, "doctor")
    assert "DVC version" in proc.stdout and "ERROR" not in proc.stderr
    assert dvc(repo, "config", "core.analytics").stdout.strip() == "false"
    assert dvc(repo, "config", "core.check_update").stdout.strip() == "false"


def test_metrics_show_base_vs_lora(repo):
    out = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    flat = json.dumps(out)
    assert "lora" in flat and "base" in flat and "mse" in flat


def test_remote_push_and_pull(repo, tmp_path):
    """A teammate gets data, latents, models and reports from a local-folder remote, no rerun."""
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "-d", "--local", "teamstore", str(remote))
    dvc(repo, "push")
    mate = tmp_path / "mate"
    git(tmp_path, "clone", "-q", str(repo), str(mate))
    dvc(mate, "remote", "add", "-d", "--local", "teamstore", str(remote))
    dvc(mate, "pull")
    for rel in ("data/latents/index.json", "models/lora/pytorch_lora_weights.safetensors",
                "models/base/model_index.json", "reports/evaluate/metrics.json", "reports/results.md"):
        assert (mate / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert ran(dvc(mate, "repro")) == set()  # everything is up to date: nothing reruns


def test_branches_metrics_params_and_offline_plots(repo, tmp_path):
    git(repo, "checkout", "-q", "-b", "rank2")
    write_params(repo, {"train.lora.rank": 2})
    assert ran(dvc(repo, "repro")) == {"check", "train", "evaluate", "generate", "report"}
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "rank 2")
    metrics = json.loads(dvc(repo, "metrics", "diff", "main", "--json").stdout)
    assert "reports/evaluate/metrics.json" in metrics and "lora.mse" in metrics["reports/evaluate/metrics.json"]
    params = json.loads(dvc(repo, "params", "diff", "main", "--json").stdout)
    assert params["params.yaml"]["train.lora.rank"]["old"] == 12
    assert params["params.yaml"]["train.lora.rank"]["new"] == 2

    out = tmp_path / "plots"
    dvc(repo, "plots", "diff", "main", "--out", str(out))
    html = (out / "index.html").read_text()
    assert "<script src=" not in html and "cdn.jsdelivr" not in html  # nothing to fetch
    dom = render_offline(out / "index.html")
    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    images = [p for p in plots if isinstance(p, str) and p.endswith(".png")]
    assert dom.count('class="marks"') >= len(plots) - len(images)  # vega drew every chart (a canvas each)
    assert dom.count("<img") >= 2 * len(images)  # image plots of both revisions, each once

    # A fresh clone compares commits from git alone: no remote, no pull.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-b", "rank2", str(repo), str(clone))
    diff = dvc(clone, "metrics", "diff", "HEAD~1", "--json")
    assert "failed to load" not in diff.stderr.lower()
    lora = json.loads(diff.stdout)["reports/evaluate/metrics.json"]["lora.mse"]
    assert isinstance(lora["old"], float) and isinstance(lora["new"], float) and lora["old"] != lora["new"]
    plots_proc = dvc(clone, "plots", "diff", "HEAD~1", "--out", str(tmp_path / "clone_plots"))
    assert "failed to load" not in (plots_proc.stdout + plots_proc.stderr).lower()
    assert "Attribute balanced accuracy, base vs LoRA" in (tmp_path / "clone_plots/index.html").read_text()
    git(repo, "checkout", "-q", "main")
    dvc(repo, "checkout")


def test_experiments_run_show_and_queue(repo):
    dvc(repo, "exp", "run", "-n", "rank4", "-S", "train.lora.rank=4", "-S", "train.learning_rate=0.001")
    dvc(repo, "exp", "run", "--queue", "-S", "train.lora.rank=2")  # one queued run: the queue's path
    dvc(repo, "exp", "run", "--run-all")
    table = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    ranks = set()
    for rev in table:
        for exp in rev.get("experiments") or []:
            for ex in exp.get("revs", []):
                data = ex.get("data") or {}
                ranks.add(data.get("params", {}).get("params.yaml", {}).get("data", {})["train"]["lora"]["rank"])
                assert "reports/evaluate/metrics.json" in data.get("metrics", {})
    assert {2, 4} <= ranks
    shown = dvc(repo, "exp", "show", "--only-changed", "--no-pager").stdout
    assert "rank4" in shown
    # `exp run` leaves its result in the workspace: back to the committed state for what follows
    back_to_head(repo)
    status = dvc(repo, "status").stdout
    assert ran(dvc(repo, "repro")) == set(), status


def test_param_changes_rerun_only_downstream(repo):
    # a train param reruns train and what follows it: test_branches_metrics_params_and_offline_plots.
    # Which stages a param reaches first, from `dvc status` (what repro would start from; each
    # stage below it reruns when its input changes, as the repros here show).
    for key, value, first in (("filter.min_caption_length", 12, "filter"), ("precompute.crop", "top", "precompute")):
        write_params(repo, {key: value})
        changed = json.loads(dvc(repo, "status", "--json").stdout)
        assert set(changed) == {"check", first}, changed  # check reads every param; nothing upstream
        params = changed[first][0]["changed deps"]["params.yaml"]  # the key, or its section where the stage takes it whole
        assert key in params or key.split(".")[0] in params, changed
        git(repo, "checkout", "--", "params.yaml")
    write_params(repo, {"generate.guidance_scale": 9.0})
    assert ran(dvc(repo, "repro")) == {"check", "evaluate", "generate", "report"}
    write_params(repo, {"judge.epochs": 3})  # a judge change never reruns train
    assert ran(dvc(repo, "repro")) == {"check", "judge", "evaluate", "report"}
    # the tiny base is pretrained at the fine-tuning buckets, so it reruns too
    write_params(repo, {"precompute.resolution": 32})  # generate.height/width auto follow the buckets
    assert ran(dvc(repo, "repro")) == {"check", "base_model", "precompute", "train", "evaluate", "generate", "report"}


def test_editing_stage_code_reruns_it(repo):
    with open(repo / "stages/generate.py", "a") as f:
        f.write("\n# touched\n")
    assert ran(dvc(repo, "repro")) == {"generate", "report"}


def test_two_process_training_gives_one_adapter(repo):
    """torchrun starts 2 CPU processes (gloo); Accelerator trains with DDP (the UNet and, by
    default, the text encoder, each wrapped); one adapter with both parts results."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    write_params(repo, {"cpu_threads": 1})  # one thread per process: 2 x 2 threads on 2 cores ran 2x slower
    run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "stages.train"], repo)
    report = json.loads((repo / "reports/train_report.json").read_text())
    assert report["system"]["processes"] == 2 and report["steps"] == SMALL["train.max_steps"]
    assert report["best_val"]["mse"] < report["base_val"]["mse"] and report["text_encoder_lora_modules"] == 8
    import torch

    from fashion_lora.lora import load_pipeline, lora_components

    pipe = load_pipeline(repo / "models/base", repo / "models/lora", torch.device("cpu"))
    assert lora_components(pipe) == ["unet", "text_encoder"]

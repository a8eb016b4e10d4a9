"""Helpers shared by the tests: params, temp repo copies, the dvc/git runner, small training runs.

Fixtures live in conftest.py; tests import helpers from here, never from another test file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml
from PIL import Image, ImageFilter

from fashion_lora.params import Params, parse_params
from fashion_lora.training import Outputs

REPO = Path(__file__).resolve().parents[1]

CAPTIONS = ["The lady wears a short-sleeve T-shirt with cotton fabric and pure color patterns.",
            "The gentleman wears a long-sleeve sweater with knitted fabric and striped patterns.",
            "The upper clothing has no sleeves, chiffon fabric and lattice patterns. There is a hat on her head."]

# Small but complete settings for end-to-end runs of the real pipeline in a temp copy.
SMALL = {
    "cpu_threads": 1,  # two test workers on two cores (make test): one thread each, never oversubscribed
    "model.base": "tiny-random",  # the pretrained default takes minutes; its own tests are in test_pretrain
    "data.synthetic.count": 80,
    "train.max_steps": 20,
    "train.val_every": 10,
    "train.checkpoint_every": 10,
    "evaluate.repeats": 2,
    "evaluate.captions_per_value": 1,
    "judge.epochs": 20,  # enough for some attributes to beat chance on its 7 held-out images
    "judge.min_balanced_accuracy": 0.0,  # score what the judge of so small a run reads above chance: wiring under test
    "judge.min_items": 1,
    "evaluate.attribute_steps": 2,
    "generate.steps": [2, 3],
    "generate.prompts": ["The lady wears a sleeveless tank top.", "The gentleman wears a hat."],
}


def set_key(raw: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = raw
    for k in path:
        node = node[k]
    node[last] = value


def raw_params(**overrides) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for k, v in overrides.items():
        set_key(raw, k, v)
    return raw


def small_params(extra: dict | None = None) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for k, v in {**SMALL, **(extra or {})}.items():
        set_key(raw, k, v)
    return parse_params(raw)


def env() -> dict:
    env = dict(os.environ)
    # Stage commands run `python`: make it this interpreter (the project's venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.com")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.com")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, check=check)


def ran(proc: subprocess.CompletedProcess) -> set[str]:
    """Stages a `dvc repro` considered changed: run, or restored from its run-cache (same deps seen before)."""
    found = re.findall(r"Running stage '(\w+)'|Stage '(\w+)' is cached", proc.stdout)
    return {a or b for a, b in found}


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", *args], repo)


def back_to_head(repo: Path) -> None:
    """Work tree, git's index and DVC's outputs back to the last commit after a `dvc exp run`.
    From HEAD, not the index (`git checkout -- .`): DVC's experiments stash and re-apply workspace
    changes, and a CI run once found the check report stale after `git checkout -- .` (most likely
    restored from what DVC had left in the index)."""
    git(repo, "reset", "-q", "--hard", "HEAD")
    dvc(repo, "checkout", "--force")
    assert git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip() == ""


def make_repo(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project's source files (tracked + new, not ignored) into a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = REPO / f
        if src.is_file() and not f.startswith(("tests/", "reports/")):  # reports/: the last run's outputs
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    (dest / "dvc.lock").unlink(missing_ok=True)
    if overrides:
        write_params(dest, overrides)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "init")
    return dest


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a completed pipeline repo (work tree, git, DVC's cache) at `dest`, to change freely."""
    shutil.copytree(run, dest, symlinks=True)
    return dest


def write_params(repo: Path, overrides: dict) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for k, v in overrides.items():
        set_key(raw, k, v)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def render_offline(page: Path) -> str:
    """The DOM of `page` after its scripts ran in headless Chromium, with every host unresolvable
    (so any request to leave the machine fails)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed for the plots test: apt-get install chromium (.ci/run does)"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", '--host-resolver-rules=MAP * ~NOTFOUND',
             "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def train_params(**train_kw) -> Params:
    """SMALL params with `train.*` overrides (`lora={...}` for train.lora.*, `text_encoder_lora={...}`,
    `ema={...}` likewise). `train.max_token_length: auto` is what the train stage resolves from
    filter's record before it calls `train`: 77 here, the fixtures' captions are short."""
    p = small_params()
    nested = {k: train_kw.pop(k) for k in ("lora", "text_encoder_lora", "ema") if k in train_kw}
    t = replace(p.train, **{"max_token_length": 77, **train_kw})
    for k, v in nested.items():
        t = replace(t, **{k: replace(getattr(t, k), **v)})
    return replace(p, train=t)


class Crash(Exception):
    """A run that dies mid-training (raised by `crash_at`)."""


def crash_at(step: int):
    """An `on_validation` callback of `train` that raises Crash at the validation of `step`."""
    def callback(s: int, metrics: dict) -> None:
        if s == step:
            raise Crash(f"crash at step {step}")
    return callback


def outputs(root: Path) -> Outputs:
    return Outputs(lora_dir=root / "lora", live_dir=root / "live", checkpoint_dir=root / "ckpt")


def blur(img: Image.Image, radius: float = 6.0) -> Image.Image:
    """A deliberately unsharp image (precompute's `blurry` reason)."""
    return img.filter(ImageFilter.GaussianBlur(radius))

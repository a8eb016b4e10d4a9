"""Kill -9 each long stage mid-run in a temp repo copy, rerun `dvc repro`, and check every
output equals that of the session's uninterrupted `small_run` from clean with the same settings
(which also shows two clean runs agree)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import SMALL, dvc, env, make_repo

# Copies of the session's small pipeline: on one xdist worker, which builds it once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("small_run")]

# Outputs that hold wall-clock timings legitimately differ between runs.
TIMED = {"reports/filter.json", "reports/precompute.json", "reports/train_report.json",
         "reports/generate/metrics.json", "reports/results.md"}


def out_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", []) if o["path"] not in TIMED}


def repro_until(repo: Path, ready, timeout: float = 300) -> str:
    """Start `dvc repro`, SIGKILL its whole process group once `ready(log)` is true."""
    log = repo / "repro.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env(), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    try:
        while not ready(log.read_text()):
            assert proc.poll() is None, f"repro ended before the kill point:\n{log.read_text()[-3000:]}"
            assert time.time() - t0 < timeout, "kill point never reached"
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text()


@pytest.fixture(scope="module")
def reference(small_run) -> dict[str, str]:
    """Outputs of an uninterrupted run from clean with `SMALL` settings: the shared session run."""
    return out_hashes(small_run)


def test_kill_each_stage_then_rerun_gives_identical_outputs(tmp_path, reference):
    repo = make_repo(tmp_path, SMALL)
    # filter: killed once its progress bar ("filter:   0%|...", tqdm's first line) shows it decoding
    repro_until(repo, lambda log: re.search(r"Running stage 'filter'.*filter:\s+\d+%\|", log, re.S) is not None)
    assert not (repo / "data/fashion_data.csv").exists() or "filter" not in (repo / "dvc.lock").read_text()
    # precompute: killed once its staging folder exists (shards being written)
    repro_until(repo, lambda log: "Running stage 'precompute'" in log and (repo / "data/.latents.tmp").exists())
    assert not (repo / "data/latents/index.json").exists()  # no half output that looks complete
    # train: killed right after its first checkpoint
    ckpt = repo / "models/checkpoints/checkpoint.pt"
    repro_until(repo, lambda log: "Running stage 'train'" in log and ckpt.exists())
    assert not (repo / "models/lora/pytorch_lora_weights.safetensors").exists()
    # generate: killed after the first image
    staging = repo / "reports/generate/.images.tmp"
    log = repro_until(repo, lambda log: staging.exists() and any(staging.glob("*.png")))
    assert "resuming from models/checkpoints/checkpoint.pt at step 10" in log  # train lost < 10 steps
    dvc(repo, "repro")
    assert out_hashes(repo) == reference
    assert "Running stage" not in dvc(repo, "repro").stdout

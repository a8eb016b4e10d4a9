"""Training on two CPU processes (torchrun, gloo): one validation and one stop decision for all,
and resuming on another process count."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_lora.training import train
from tests.helpers import REPO, Crash, crash_at, env, outputs, train_params

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def torchrun(tiny_base: Path, latent_dir: Path, out: Path, scenario: str = "plain", **overrides):
    """Two processes of `tests/two_process_train.py`; processes left waiting for each other are
    killed, all of them, after 300 s and fail the test."""
    # --standalone: a free port of its own (a second torchrun on the other test worker may be running)
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tests.two_process_train", str(tiny_base),
           str(latent_dir), str(out), json.dumps(overrides), scenario]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the two processes never finished: one waits for the other") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_processes_whose_validation_would_differ_stop_together(tmp_path, tiny_base, latent_dir):
    """Rank 0's losses stop the run at step 4 (patience 1), rank 1's would never stop it: the
    main process's validation and decision hold for both, so neither waits for the other."""
    proc = torchrun(tiny_base, latent_dir, tmp_path, "diverging", max_steps=12, val_every=2, checkpoint_every=2,
                    patience=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["system"]["processes"] == 2 and report["steps"] == 4 and report["stop_reason"] == "early_stopping"
    assert [h["mse"] for h in report["val_history"]] == [1.0, 0.9, 0.95]  # rank 0's, everywhere


def test_resume_on_another_process_count_keeps_the_global_batch_or_stops(tmp_path, tiny_base, latent_dir):
    """One process at batch 8 stops at step 4 (checkpoint at 2). Two processes at batch 8 (a
    global batch of 16) stop with one line and leave the checkpoint as it was; two at batch 4
    (the same global batch of 8) resume it to the end."""
    kw = {"max_steps": 6, "val_every": 2, "checkpoint_every": 2}
    with pytest.raises(Crash):
        train(train_params(batch_size=8, **kw), tiny_base, latent_dir, outputs(tmp_path), on_validation=crash_at(4))
    checkpoint = (tmp_path / "ckpt/checkpoint.pt").read_bytes()
    proc = torchrun(tiny_base, latent_dir, tmp_path, batch_size=8, **kw)
    # each process stops with the stage's one line and exit code 2 (torchrun then fails as a whole)
    assert proc.returncode != 0 and "exitcode: 2" in proc.stderr, proc.stderr[-3000:]
    assert "ERROR fashion_lora: train: " in proc.stderr and "[rank0]: Traceback" not in proc.stderr
    assert "1 process(es) x train.batch_size 8 = a global batch of 8; this run is 2 x 8" in proc.stderr
    assert "train.batch_size 4 on 2" in proc.stderr
    assert (tmp_path / "ckpt/checkpoint.pt").read_bytes() == checkpoint
    proc = torchrun(tiny_base, latent_dir, tmp_path, batch_size=4, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "at step 2" in proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed_from_step"] == 2 and report["steps"] == 6 and report["system"]["processes"] == 2

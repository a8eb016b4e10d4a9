"""The benchmark scripts keep working (tiny sizes; the figures themselves come from `make bench`)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("module,args,key", [
    ("benchmarks.data_throughput", ["--count", "60", "--reps", "1", "--no-deepfashion-size"], "filter"),
    ("benchmarks.train_step", ["--steps", "3", "--reps", "1", "--resolutions", "64"], "64"),
    ("benchmarks.memory", ["--sizes", "40", "60", "--skip-sd15", "--train-steps", "10"], "data"),
    ("benchmarks.gpu", ["--smoke"], "measurements"),
])
def test_benchmark_runs_and_writes_json(tmp_path, module, args, key):
    env = {**os.environ, "BENCH_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / f"{module.split('.')[1]}.json").read_text())
    assert key in out and out["machine"]["cores"] >= 1
    if module == "benchmarks.gpu":  # every path ran (a failing option is recorded, not raised)
        failed = {k: v["error"] for k, v in out["measurements"].items() if "error" in v}
        assert not failed and len(out["measurements"]) >= 10, failed
        assert out["measurements"]["stage_b2"]["steps_per_second"] > 0


def test_the_judges_memory_stays_within_its_estimate(tmp_path):
    """benchmarks.judge_memory at 300 photos of DeepFashion's size: the uint8 buffer's peak stays
    within its estimate (N x 3 x 192 x 128 bytes) plus the decoders' working memory, where the
    float32 list + torch.cat it replaced took about eight times the estimate."""
    env = {**os.environ, "BENCH_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.judge_memory", "--images", "300"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "judge_memory.json").read_text())
    estimate, runs = out["estimate_mib"], out["runs"]
    assert runs["uint8 buffer, 2 threads"]["tensor_mib"] == pytest.approx(estimate, abs=0.1)
    assert runs["uint8 buffer, 2 threads"]["peak_mib"] < estimate + 40
    assert runs["float32 + torch.cat (before)"]["peak_mib"] > 4 * estimate
    assert out["at_scale"]["all images"]["buffer_mib"] == pytest.approx(44096 * 3 * 192 * 128 / 2**20, abs=0.1)


@pytest.mark.xdist_group("small_run")  # on the worker that holds the session's small pipeline
def test_previous_stack_check_runs_on_a_finished_pipeline(tmp_path, small_run):
    """benchmarks.previous_stack's wiring on a finished pipeline, with the pinned stack on both
    sides (`make bench` builds the previous stack's venv; CI does not): every case loads and
    draws on both sides, and the controls, the adapter rewritten as it was written before (alpha
    only in the metadata; flat text-encoder keys), draw in the pinned stack what the adapter
    draws: the folded alpha and the classic keys change nothing there."""
    env = {**os.environ, "BENCH_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.previous_stack", "--python", sys.executable, "--steps", "2"],
                          cwd=small_run, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "previous_stack.json").read_text())
    assert out["lora_effect"]["mean"] > 1  # the adapter moves the images (0-255 scale)
    assert {name for name, case in out["cases"].items() if case["loads"]} == {
        "base", "fused", "lora", "kohya", "control_flat_keys", "control_alpha_in_metadata"}
    assert all(case["vs_pinned"]["max"] == 0 for case in out["cases"].values())  # one stack: the same drawing
    for control in ("control_flat_keys", "control_alpha_in_metadata"):
        assert out["cases"][control]["pinned_vs_lora"]["max"] < 1.0, out["cases"][control]

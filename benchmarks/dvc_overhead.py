"""DVC overhead on the default pipeline: full `dvc repro` with the time of each stage, no-op
`dvc repro`, and `dvc exp run` changing one train param (should be train + evaluate + generate +
report, no precompute).

    python -m benchmarks.dvc_overhead [--reps 3]

Runs in a temporary git copy of this repo; writes reports/bench/dvc_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    return e


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    (dest / "dvc.lock").unlink(missing_ok=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def timed_stream(cmd: list[str], cwd: Path) -> tuple[float, dict[str, float], str]:
    """Run `cmd`; total seconds, seconds per stage (from 'Running stage' lines), output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    marks, lines = [], []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"Running stage '(\w+)'", line)
        if m:
            marks.append((m.group(1), time.perf_counter()))
    proc.wait()
    end = time.perf_counter()
    if proc.returncode:
        raise RuntimeError("".join(lines[-30:]))
    stages = {name: round((marks[i + 1][1] if i + 1 < len(marks) else end) - t, 2) for i, (name, t) in enumerate(marks)}
    return end - t0, stages, "".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_repo(Path(tmp))
        full, stages, _ = timed_stream(dvc + ["repro"], repo)
        noop = [timed_stream(dvc + ["repro"], repo)[0] for _ in range(args.reps)]
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "run"], cwd=repo, check=True)
        exp, exp_stages, _ = timed_stream(dvc + ["exp", "run", "-S", "train.lora.rank=4"], repo)
    res = {"full_repro_s": round(full, 2), "stages_s": stages,
           "noop_repro_s": {"min": round(min(noop), 3), "median": round(statistics.median(noop), 3)},
           "exp_run_one_train_param_s": round(exp, 2), "exp_run_stages": sorted(exp_stages),
           "exp_run_stages_s": exp_stages}
    rows = [("measurement", "seconds"), ("full dvc repro (default pipeline)", res["full_repro_s"]),
            *((f"  stage {k}", v) for k, v in stages.items()),
            ("no-op dvc repro (median)", res["noop_repro_s"]["median"]),
            (f"dvc exp run -S train.lora.rank=4 ({', '.join(sorted(exp_stages))})", res["exp_run_one_train_param_s"])]
    write("dvc_overhead", res, rows)


if __name__ == "__main__":
    main()

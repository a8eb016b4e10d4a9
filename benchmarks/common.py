"""Shared helpers for benchmark scripts: repetitions, min/median, JSON + table output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

OUT = Path(os.environ.get("BENCH_OUT", "reports/bench"))  # the smoke test writes elsewhere


def stats(times: list[float]) -> dict:
    """Min and median seconds of repeated measurements."""
    return {"min_s": min(times), "median_s": statistics.median(times), "reps": len(times)}


def timed(fn: Callable[[], object], reps: int) -> dict:
    """Run `fn` `reps` times; min and median seconds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return stats(times)


def seconds_per_call(fn: Callable[[int], object], calls: int, warmup: int = 0) -> float:
    """Mean seconds of `fn(i)` over `calls` calls, after `warmup` untimed ones (i counts on)."""
    for i in range(warmup):
        fn(i)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + calls):
        fn(i)
    return (time.perf_counter() - t0) / calls


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (CPU families differ ~3x in speed here)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write(name: str, result: dict, rows: list[tuple]) -> Path:
    """Write reports/bench/<name>.json and print a small table."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    width = max(len(str(r[0])) for r in rows)
    for r in rows:
        print(f"{str(r[0]):<{width}}  " + "  ".join(str(x) for x in r[1:]))
    print(f"-> {path}")
    return path

"""Render reports/bench/*.json into the table of docs/performance.md (between the bench markers),
and the GPU runs kept in reports/gpu/*.json (by `benchmarks/gpu.py`) into docs/gpu.md.

    python -m benchmarks.readme_table        # after running the benchmarks
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PERFORMANCE = Path("docs/performance.md")
GPU_DOC = Path("docs/gpu.md")
BENCH = Path("reports/bench")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
GPU_RUNS = Path("reports/gpu")  # in git: GPU figures cannot be measured again on the CI machines
GPU_START, GPU_END = "<!-- gpu:start -->", "<!-- gpu:end -->"


def _load(name: str) -> dict | None:
    path = BENCH / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table() -> str:
    rows: list[tuple[str, str]] = []
    machine = None
    if ts := _load("train_step"):
        machine = ts["machine"]
        for res in sorted(k for k in ts if k.isdigit()):
            r = ts[res]
            rows.append((f"train step, tiny model, {res} px, batch {r['batch_size']}: ours vs reference loop "
                         "(VAE + tokenizer every step)",
                         f"{1 / r['ours_s_per_step']['median']:.2f} vs {1 / r['reference_s_per_step']['median']:.2f} "
                         f"steps/s ({r['speedup_vs_reference']:.2f}x)"))
            rows.append((f"our full step / limit (UNet fwd+bwd+AdamW alone), {res} px",
                         f"{r['ours_over_limit']:.3f}"))
            if rest := r.get("rest_of_step_ms"):
                rows.append((f"  where the rest goes, {res} px (limit step "
                             f"{1000 * r['limit_s_per_step']['median']:.1f} ms)",
                             ", ".join(f"{k.removesuffix('_ms').replace('_', ' ')} {v:.2f} ms" for k, v in rest.items())))
    if dt := _load("data_throughput"):
        machine = machine or dt["machine"]
        for k in ("filter", "precompute"):
            r = dt[k]
            rows.append((f"{k}: ours vs one-image-at-a-time ({dt['images'][k]} images, "
                         f"{dt['images']['source_size']})",
                         f"{r['ours_img_s']:.0f} vs {r['naive_img_s']:.0f} images/s ({r['speedup']:.2f}x)"))
    if dv := _load("dvc_overhead"):
        rows.append(("full `dvc repro` of the default pipeline", f"{dv['full_repro_s']:.1f} s"))
        rows.append(("  per stage", ", ".join(f"{k} {v:.1f}" for k, v in dv["stages_s"].items()) + " s"))
        rows.append(("no-op `dvc repro`", f"{dv['noop_repro_s']['median']:.2f} s"))
        rows.append(("`dvc exp run -S train.lora.rank=4` (" + ", ".join(dv["exp_run_stages"]) + ")",
                     f"{dv['exp_run_one_train_param_s']:.1f} s"))
    if mem := _load("memory"):
        sizes = sorted(mem["data"], key=int)
        for k in ("filter", "precompute"):
            rows.append((f"peak RSS {k}, {' vs '.join(sizes)} images",
                         " vs ".join(f"{mem['data'][s][k + '_mib']:.0f}" for s in sizes) + " MiB"))
        rows.append(("peak RSS train stage, tiny model", f"{mem['train_tiny_mib']:.0f} MiB"))
        for k, v in mem.get("sd15_lora_step", {}).items():
            px, ck = k.split("_checkpointing_")
            rows.append((f"peak RSS one LoRA step, SD1.5 UNet (random weights), {px}, gradient checkpointing "
                         f"{ck.lower()}", f"{v / 1024:.2f} GiB"))
    head = (f"Measured on {machine['cores']} CPU cores ({machine['cpu']}), torch {machine['torch']}, "
            f"{machine['date']}, by `make bench`." if machine else "Run `make bench` to measure.")
    lines = [head, "", "| measurement | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines)


def _settings(r: dict) -> str:
    """What a GPU measurement ran with, from its own fields."""
    parts = [f"batch {r['batch_size']}"] if "batch_size" in r else []
    parts += [f"{r['size']} px"] if isinstance(r.get("size"), str) else []
    precision = r.get("mixed_precision") or r.get("precision") or r.get("dtype", "").removeprefix("torch.")
    parts += [precision] if precision else []
    parts += [f"compile {r['compile']}"] if r.get("compile", "none") != "none" else []
    parts += ["CUDA graphs"] if r.get("cuda_graphs") else []
    parts += ["foreach AdamW"] if r.get("fused_adamw") is False else []
    parts += ["gradient checkpointing"] if r.get("gradient_checkpointing") else []
    parts += ["LoRA fused"] if r.get("fuse_lora") else []
    parts += [f"{r['workers']} workers"] if "workers" in r else []
    return ", ".join(parts)


def _result(r: dict) -> str:
    if "skipped" in r or "error" in r:
        return f"not measured ({r.get('skipped') or r['error']})"
    if "seconds_per_image" in r:
        same = (f"; pixels vs eager: max diff {r['max_abs_diff_vs_eager']}" if "max_abs_diff_vs_eager" in r else "")
        return f"{r['seconds_per_image']:.3f} s/image{same}"
    if "steps_per_second" in r:
        out = f"{r['steps_per_second']:.2f} steps/s, {r['images_per_second']:.1f} images/s"
        out += f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        out += f", peak {r['peak_memory_mib'] / 1024:.1f} GiB" if r.get("peak_memory_mib") else ""
        return out + (f", first step {r['first_step_seconds']:.1f} s" if r.get("first_step_seconds", 0) >= 5 else "")
    if "flops" in r:
        return f"{r['flops'] / 1e12:.2f} TFLOP per forward + backward"
    return f"{r['images_per_second']:.1f} images/s"


def gpu_table(runs: list[Path]) -> str:
    """The latest figure of every GPU setting: one row per (measurement, settings), taken from the
    newest run file that measured it (`runs` newest first); older runs stay in reports/gpu/."""
    if not runs:
        return "GPU figures not yet measured: run `python -m benchmarks.gpu` on a GPU (see tools/gpu/)."
    rows: dict[tuple[str, str], str] = {}
    measured, sources = set(), []
    for path in runs:
        run = json.loads(path.read_text())
        m = run["machine"]
        sources.append(f"- [{path.stem}](../{path}): {m['gpu']}, torch {m['torch']}, {m['date']}, by "
                       f"`{run.get('tool', 'benchmarks/gpu.py')}`")
        for name, r in run["measurements"].items():
            key = (name, _settings(r))
            skipped = "skipped" in r or "error" in r
            if key in rows or (skipped and name in measured):
                continue
            rows[key] = f"| {name} | {key[1]} | {_result(r)} | {path.stem} |"
            measured |= set() if skipped else {name}
    kept = [row for (name, _), row in rows.items() if not (name in measured and "not measured" in row)]
    return "\n".join(["Runs, newest first:", *sources, "", "| measurement | settings | result | run |",
                      "|---|---|---|---|", *kept])


def _replace(text: str, start: str, end: str, body: str) -> str:
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)


def main() -> None:
    PERFORMANCE.write_text(_replace(PERFORMANCE.read_text(), START, END, table()))
    gpu = gpu_table(sorted(GPU_RUNS.glob("*.json"), reverse=True))  # newest first
    GPU_DOC.write_text(_replace(GPU_DOC.read_text(), GPU_START, GPU_END, gpu))
    print(table())
    print(gpu)


if __name__ == "__main__":
    main()

"""Render reports/bench/*.json into the README's Performance table (between the bench markers).

    python -m benchmarks.readme_table        # after running the benchmarks
"""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path("README.md")
BENCH = Path("reports/bench")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


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


def main() -> None:
    text = README.read_text()
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), f"{START}\n{table()}\n{END}", text, flags=re.S)
    README.write_text(new)
    print(table())


if __name__ == "__main__":
    main()

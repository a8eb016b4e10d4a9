"""judge stage: data/fashion_data.csv (train split's images and labels) -> models/judge/ (the attribute
classifier, safetensors, and the judge features of the held-out images) + reports/judge.json."""

import logging

import pandas as pd

from fashion_lora import paths
from fashion_lora.devices import configure_torch, resolve_device
from fashion_lora.errors import UserError
from fashion_lora.files import atomic_dir, write_json
from fashion_lora.judge import save, train_judge
from fashion_lora.params import load_params
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.judge")


def main() -> None:
    params = load_params()
    configure_torch(params, "judge")
    settings = params.judge
    df = pd.read_csv(paths.CSV, keep_default_na=False, dtype=str)
    train, held = df[df.split == "train"], df[df.split == "val"]
    if len(train) == 0 or len(held) == 0:
        raise UserError(f"{paths.CSV}: the judge needs train and val images (found {len(train)} and {len(held)}); "
                        "see filter.val_fraction")
    judge, feats = train_judge(train, held, settings, params.seed, resolve_device(settings.device, "judge.device"))
    with atomic_dir(paths.JUDGE) as tmp:
        save(judge, feats, tmp)
    write_json(paths.JUDGE_REPORT, judge.report)
    for name, row in judge.report["attributes"].items():
        if "accuracy" in row:
            log.info("%-18s held-out balanced accuracy %s (chance %s; plain %.3f, majority %.3f; %d images)%s", name,
                     row.get("balanced_accuracy", "-"), row.get("chance", "-"), row["accuracy"] or 0, row["majority"] or 0,
                     row["items"], "" if row["scored"] else f": not scored, {row['why']}")
    log.info("scored attributes: %s", ", ".join(judge.scored) or "none")


if __name__ == "__main__":
    run_stage(main)

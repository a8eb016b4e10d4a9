"""download stage: fill data/raw/ (images/ + captions.json) from `data.source`."""

import logging
from pathlib import Path

from fashion_lora.params import load_params
from fashion_lora.sources import fetch
from fashion_lora.utils import atomic_dir, run_stage, write_json

log = logging.getLogger("stages.download")
RAW = Path("data/raw")


def main() -> None:
    params = load_params()
    with atomic_dir(RAW) as stage:  # a failed download leaves the previous data/raw intact
        summary = fetch(params, stage)
        write_json(stage / "source.json", summary)
    log.info("data/raw ready: %s", {k: v for k, v in summary.items() if k != "deliberately_bad"})


if __name__ == "__main__":
    run_stage(main)

"""download stage: fill data/raw/ (images/ + captions.json + source.json) from `data.source`."""

import logging

from fashion_lora import paths
from fashion_lora.devices import configure_torch
from fashion_lora.disk import ensure_space
from fashion_lora.files import atomic_dir, write_json
from fashion_lora.params import load_params
from fashion_lora.sources import fetch
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.download")


def main() -> None:
    params = load_params()
    configure_torch(params, "download")
    ensure_space(params, "data/raw")
    with atomic_dir(paths.RAW) as stage:  # a failed download leaves the previous data/raw intact
        summary = fetch(params, stage)
        write_json(stage / paths.RAW_SOURCE.name, summary)
    log.info("data/raw ready: %s", {k: v for k, v in summary.items() if k != "deliberately_bad"})


if __name__ == "__main__":
    run_stage(main)

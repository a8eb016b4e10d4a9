"""check stage: validate params.yaml and the input paths it names before any other stage runs
(and so before DVC deletes any output). Writes reports/check.txt, the same text while valid."""

import logging

from fashion_lora import paths
from fashion_lora.params import load_params
from fashion_lora.preflight import CHECK_TEXT, check_inputs
from fashion_lora.utils import atomic_write_text, run_stage

log = logging.getLogger("stages.check")


def main() -> None:
    params = load_params()
    check_inputs(params)
    atomic_write_text(paths.CHECK, CHECK_TEXT)
    log.info("params.yaml is valid")


if __name__ == "__main__":
    run_stage(main)

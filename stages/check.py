"""check stage: validate params.yaml and the input paths it names, and size the run against the
free disk, before any other stage runs (and so before DVC deletes any output). Writes
reports/check.txt, the same text while valid, and reports/disk.json, the estimate by output."""

import logging

from fashion_lora import paths
from fashion_lora.disk import additional_need, check_free_space, estimate
from fashion_lora.files import atomic_write_text, write_json
from fashion_lora.params import load_params
from fashion_lora.preflight import CHECK_TEXT, check_inputs
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.check")


def main() -> None:
    params = load_params()
    check_inputs(params)
    disk = estimate(params)
    write_json(paths.DISK_REPORT, disk)  # written first: a refused run can read what it needs
    for warning in check_free_space(additional_need(disk)):
        log.warning("%s", warning)
    atomic_write_text(paths.CHECK, CHECK_TEXT)
    log.info("params.yaml is valid; the run needs about %.1f MB in the workspace and %.1f MB in DVC's cache",
             disk["workspace"] / 1e6, disk["cache"] / 1e6)


if __name__ == "__main__":
    run_stage(main)

"""report stage: one readable page of results, reports/results.md, built from the metrics files."""

import json
import logging
from pathlib import Path

from fashion_lora import paths
from fashion_lora.files import atomic_write_text
from fashion_lora.results import results_page
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.report")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def main() -> None:
    page = results_page(_load(paths.EVALUATE_METRICS), _load(paths.TRAIN_REPORT), _load(paths.GENERATE_METRICS),
                        _load(paths.FILTER_REPORT), _load(paths.PRECOMPUTE_REPORT), _load(paths.BASE_REPORT),
                        _load(paths.JUDGE_REPORT))
    atomic_write_text(paths.RESULTS, page)
    log.info("wrote %s", paths.RESULTS)


if __name__ == "__main__":
    run_stage(main)

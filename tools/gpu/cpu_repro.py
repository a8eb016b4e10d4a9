"""Run the SMALL pipeline on the CPU in a fresh temp repo and print its dvc.lock out hashes as JSON
(reproducibility across thread counts and machines)."""
import json
import tempfile
from pathlib import Path

import yaml

from tests.helpers import SMALL, dvc, make_repo

with tempfile.TemporaryDirectory() as tmp:
    repo = make_repo(Path(tmp), {**SMALL, **{f"{s}.device": "cpu" for s in ("precompute", "train", "evaluate", "generate")}})
    dvc(repo, "repro")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    print(json.dumps({o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", [])}, indent=1, sort_keys=True))

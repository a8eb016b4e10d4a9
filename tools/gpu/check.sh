#!/usr/bin/env bash
# GPU check of the DVC workflow on CUDA: full `dvc repro` of small settings, a forced rerun of a
# finished train, Ctrl-C in `dvc exp run` + the same command again, then the CPU pipeline's
# hashes at 2 and 16 threads. Run from the repo root on the lent GPU machine with the wheels of
# ../shared/gpu/wheels.sh plus tools/gpu/extra_wheels.txt in .whl/ (carry .whl); results in $OUT.
set -u
ROOT=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# DVC runs `python -m stages.X`: a wrapper, not a symlink (a symlinked venv python loses its venv)
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python && chmod +x /tmp/bin/python
git config --global user.email gpu@example.com; git config --global user.name gpu
{ nvidia-smi --query-gpu=name,memory.total --format=csv; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"; lscpu | grep -E "Model name|^CPU\(s\)"; } > $OUT/machine.txt 2>&1
python3 - <<'PY' > $OUT/make_repo.log 2>&1
from pathlib import Path
from tests.helpers import SMALL, make_repo
r = Path("/tmp/r"); r.mkdir()
make_repo(r, {**SMALL, "data.synthetic.count": 300, "train.max_steps": 60, "train.checkpoint_every": 10,
              "train.val_every": 20})
PY
cd /tmp/r || exit 1
( time python3 -m dvc repro ) > $OUT/repro.log 2>&1; echo "repro rc=$?" >> $OUT/summary.txt
cp reports/train_report.json $OUT/train_report_repro.json 2>/dev/null
cp reports/results.md $OUT/results_repro.md 2>/dev/null
md5sum models/lora/*.safetensors reports/train_report.json > $OUT/md5_before_force.txt 2>&1
python3 -m dvc repro -f -s train > $OUT/force_train.log 2>&1; echo "force train rc=$?" >> $OUT/summary.txt
md5sum models/lora/*.safetensors reports/train_report.json > $OUT/md5_after_force.txt 2>&1
git add -A >/dev/null 2>&1; git commit -qm run >/dev/null 2>&1
# Ctrl-C during dvc exp run, then the same command
CMD="python3 -m dvc exp run -S train.max_steps=400 -S train.checkpoint_every=20 -S train.val_every=100"
setsid $CMD > $OUT/exp_interrupted.log 2>&1 &
PID=$!
for i in $(seq 1 600); do grep -q "step 100: val MSE" $OUT/exp_interrupted.log && break; sleep 0.2; done
sleep 1; kill -INT -- -$PID; wait $PID; echo "interrupted exp rc=$?" >> $OUT/summary.txt
$CMD > $OUT/exp_resumed.log 2>&1; echo "resumed exp rc=$?" >> $OUT/summary.txt
cp reports/train_report.json $OUT/train_report_exp.json 2>/dev/null
grep -h "stopped at step\|resuming from\|not resuming\|Traceback" $OUT/*.log >> $OUT/summary.txt
# CPU reproducibility on this machine's CPU (its torch differs from the dev machine's too)
cd "$ROOT"
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 python3 tools/gpu/cpu_repro.py > $OUT/cpu_threads2.json 2> $OUT/cpu_threads2.err
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=16 python3 tools/gpu/cpu_repro.py > $OUT/cpu_threads16.json 2> $OUT/cpu_threads16.err
echo "cpu repro done" >> $OUT/summary.txt

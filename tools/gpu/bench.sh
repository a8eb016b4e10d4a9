#!/usr/bin/env bash
# GPU speed benchmark on the lent machine: installs the carried wheels (.whl/, from
# ../shared/gpu/wheels.sh) and runs benchmarks/gpu.py; its JSON and log land in $OUT.
#   bash tools/gpu/bench.sh [budget seconds, default 420] [more benchmarks.gpu arguments, e.g. --only ...]
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > $OUT/pip.log 2>&1 || { tail -5 $OUT/pip.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 BENCH_OUT=$OUT
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; lscpu | grep -E "Model name|^CPU\(s\)"; } > $OUT/machine.txt 2>&1
cat $OUT/machine.txt
python3 -m benchmarks.gpu --budget-s "${1:-420}" "${@:2}" > $OUT/gpu.log 2>&1
echo "rc=$?"
grep -v "it/s\]\|step/s\]\|batch/s\]" $OUT/gpu.log | tail -40

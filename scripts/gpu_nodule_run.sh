#!/usr/bin/env bash
# The two-stage nodule detector's gpu preset at full resolution on a lent GPU machine (issue 7):
# synthetic CTs and lung masks made on the device's CPU cores, stage-1 candidates and the
# classifier on the GPU, FROC / CPM on the held-out site; prints the times and one JSON result
# line. The 2026-11-26 H100 run (72 CTs, 150 s of training) took 5.5 minutes:
#   scripts/gpu_nodule_run.sh --train-patients 20 --test-patients 12 --minutes 2.5 --budget-s 390
#
# The device has torch + lightning + numpy + scipy + PyYAML but not pydantic or pydicom: fetch
# their wheels once, here (needs the package index), into .whl/ (git-ignored):
#   scripts/gpu_nodule_run.sh --fetch
# then run it there with carry [".whl"]:
#   scripts/gpu_nodule_run.sh [--train-patients 6] [--test-patients 10] [--minutes 2.5] [--budget-s S]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--fetch" ]]; then
    grep -qx "/.whl/" "$(git rev-parse --git-path info/exclude)" || echo "/.whl/" >> "$(git rev-parse --git-path info/exclude)"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pydicom==3.0.2 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5
    exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout 540 python3 scripts/gpu_nodule_run.py --budget-s 500 "$@"

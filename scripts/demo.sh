#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run Hounsfield on the embedded default (SQLite + local blobs
# under ./var) with demo data. Extra arguments go to `hounsfield demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hounsfield --data-dir var --profile demo demo "$@"

#!/usr/bin/env bash
# Set up everything Hounsfield and its tests need on a fresh Debian machine:
# Debian packages (dcmtk, Orthanc + DICOMweb plugin, dicom3tools, Chromium, PostgreSQL, Redis, npm, fonts),
# a virtual environment in .venv (CPU torch first, then the package), and the OHIF viewer dist.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# fonts: the PDF summary embeds DejaVu Sans, with Droid Sans Fallback for CJK names (results/pdf.py)
APT_PKGS="dcmtk orthanc orthanc-dicomweb dicom3tools chromium postgresql redis-server fonts-dejavu-core fonts-droid-fallback"
# npm: Debian's package only where no npm is on the PATH (a NodeSource nodejs ships its own npm
# and conflicts with Debian's)
command -v npm >/dev/null 2>&1 || APT_PKGS="$APT_PKGS npm"
missing=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "==> apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "==> installing torch (CPU build)"
  .venv/bin/pip install -q torch==2.13.0
fi
echo "==> installing hounsfield and its dependencies"
.venv/bin/pip install -q -e '.[ai,dev]'

if [ -f scripts/fetch_viewer.sh ]; then
  bash scripts/fetch_viewer.sh
fi
echo "==> setup done"

#!/usr/bin/env bash
# Replays the image's install (addon/install.sh) in a fresh temporary venv,
# then imports the package, runs --help, checks torch is not there and, given
# CLIP (a wav file), transcribes it: a container engine does not run in CI, so
# this is how the Dockerfile's install is exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

# The same files the Dockerfile copies, so a file missing from the image's
# build (or built in-tree into someone's checkout) shows up here.
mkdir "${work}/src"
cp -r pyproject.toml README.md wyoming_amanuensis "${work}/src/"

addon/install.sh "${work}/venv" "${work}/src"
"${work}/venv/bin/python" -c "import wyoming_amanuensis"
"${work}/venv/bin/python" -m wyoming_amanuensis --help >/dev/null
# The image has no torch, and transcribes without it (the graphs written at this first start).
if "${work}/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "torch is installed in the image's venv" >&2
    exit 1
fi
if [ -n "${CLIP:-}" ]; then
    "${work}/venv/bin/python" -m wyoming_amanuensis transcribe --cache-dir "${work}/cache" --threads 1 "${CLIP}"
fi
echo "image install OK"

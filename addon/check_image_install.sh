#!/usr/bin/env bash
# Replays the image's install (addon/install.sh) in a fresh temporary venv,
# then imports the package and runs --help: a container engine does not run
# in CI, so this is how the Dockerfile's install is exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

# The same files the Dockerfile copies, so a file missing from the image's
# build (or built in-tree into someone's checkout) shows up here.
mkdir "${work}/src"
cp -r pyproject.toml README.md wyoming_amanuensis "${work}/src/"

# Only PyPI is reachable from CI, not PyTorch's CPU index: take torch from the
# configured indexes; the pip cache is reused.
TORCH_INDEX_URL="" addon/install.sh "${work}/venv" "${work}/src"
"${work}/venv/bin/python" -c "import wyoming_amanuensis"
"${work}/venv/bin/python" -m wyoming_amanuensis --help >/dev/null
echo "image install OK"

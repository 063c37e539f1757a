#!/usr/bin/env bash
# Replays the image's install (addon/install.sh) in a fresh temporary venv,
# then imports the package, runs --help and, given CLIP (a wav file),
# transcribes it without importing torch: a container engine does not run in CI, so
# this is how the Dockerfile's install is exercised.
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
# Given CLIP: the image's venv transcribes it (its graphs written at this first
# start) without importing torch.
if [ -n "${CLIP:-}" ]; then
    "${work}/venv/bin/python" - "${CLIP}" "${work}/cache" <<'PY'
import sys
import soundfile
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.pipeline import Engine
engine = Engine.load(settings_from(encoder_backend="cpu", threads=1, cache_dir=sys.argv[2]))
samples, rate = soundfile.read(sys.argv[1], dtype="float32")
print("transcript:", engine.transcribe(samples, rate).text)
if "torch" in sys.modules:
    sys.exit("torch was imported")
PY
fi
echo "image install OK"

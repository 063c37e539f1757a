#!/usr/bin/env bash
# The image's Python install, kept in one script so that CI
# (addon/check_image_install.sh) runs exactly what the Dockerfile runs.
# Usage: install.sh VENV SOURCE_DIR
# TORCH_INDEX_URL: where torch comes from (the Dockerfile sets PyTorch's CPU
# index); empty means pip's configured indexes. PYTHON: the interpreter.
set -euo pipefail
venv=$1
source_dir=$2

# A venv, because Debian's python3 is externally managed (PEP 668).
"${PYTHON:-python3}" -m venv "${venv}"
# torch first, so that silero-vad's torch requirement is already met and pip never
# resolves it to the multi-GB CUDA build. The server never imports torch (it runs
# on onnxruntime and reads only silero-vad's ONNX file), but that wheel requires it.
"${venv}/bin/pip" install ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} "torch==2.13.0"
# The bundled models are dependencies of the package: nothing is downloaded at run time.
"${venv}/bin/pip" install "${source_dir}"
"${venv}/bin/python" -m wyoming_amanuensis --version

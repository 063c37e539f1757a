#!/usr/bin/env bash
# The image's Python install, kept in one script so that CI
# (addon/check_image_install.sh) runs exactly what the Dockerfile runs.
# Usage: install.sh VENV SOURCE_DIR
# PYTHON: the interpreter. No torch: the add-on runs on the CPU, where the model
# runs on onnxruntime (torch is the optional extra for CUDA and the NPU, which the
# image has no runtime for), and torch would be most of the image.
set -euo pipefail
venv=$1
source_dir=$2

# A venv, because Debian's python3 is externally managed (PEP 668).
"${PYTHON:-python3}" -m venv "${venv}"
# The bundled models are dependencies of the package: nothing is downloaded at run time.
"${venv}/bin/pip" install "${source_dir}"
"${venv}/bin/python" -m wyoming_amanuensis --version

"""Which runtime loads a model, decided before anything heavy is imported.

On the CPU the model runs on ONNX Runtime (``onnx_runtime``) unless ``--cpu-runtime
torch`` says otherwise; the CUDA and NPU encoder backends run on torch
(``encoders.select_backend``). ``--encoder-backend auto`` probes for those devices
without importing torch (importing it alone costs ~1.2 s and ~200 MiB): only where a
device may be present does the torch path load and try it for real, falling back to the
CPU as it always has.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .config import Settings

DEVICE_NODE_DIR = Path("/dev/accel")  # amdxdna's DRM accel nodes (accel0, ...)
NVIDIA_NODES = (Path("/dev/nvidiactl"), Path("/proc/driver/nvidia/version"))


def _maybe_npu() -> bool:
    return DEVICE_NODE_DIR.is_dir() and any(DEVICE_NODE_DIR.glob("accel*"))


def _maybe_cuda() -> bool:
    return any(p.exists() for p in NVIDIA_NODES) and importlib.util.find_spec("torch") is not None


def runtime_for(settings: Settings) -> str:
    """"onnx" or "torch" for this configuration on this machine."""
    if settings.encoder_backend in ("cuda", "npu"):
        return "torch"
    if settings.encoder_backend == "auto" and (_maybe_npu() or _maybe_cuda()):
        return "torch"
    return settings.cpu_runtime

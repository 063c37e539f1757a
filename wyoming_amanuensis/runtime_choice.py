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
import logging
from pathlib import Path

from .config import Settings

DEVICE_NODE_DIR = Path("/dev/accel")  # amdxdna's DRM accel nodes (accel0, ...)
NVIDIA_NODES = (Path("/dev/nvidiactl"), Path("/proc/driver/nvidia/version"))

_LOG = logging.getLogger(__name__)


class RuntimeUnavailable(ValueError):
    """A configuration this installation cannot run; the message says what to install."""


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _maybe_npu() -> bool:
    return DEVICE_NODE_DIR.is_dir() and any(DEVICE_NODE_DIR.glob("accel*"))


def _maybe_cuda() -> bool:
    return any(p.exists() for p in NVIDIA_NODES)


def runtime_for(settings: Settings) -> str:
    """"onnx" or "torch" for this configuration on this machine. Raises RuntimeUnavailable
    where it needs torch and torch is not installed (an optional extra)."""
    if settings.encoder_backend == "auto":
        device = "npu" if _maybe_npu() else "cuda" if _maybe_cuda() else None
        if device is not None and has_torch():
            return "torch"
        if device is not None:
            _LOG.info("encoder backend auto: a %s device may be present, but its backend needs torch "
                      "(pip install 'wyoming-amanuensis[torch]'); using the cpu", device)
        runtime = settings.cpu_runtime
    else:
        runtime = "torch" if settings.encoder_backend in ("cuda", "npu") else settings.cpu_runtime
    if runtime == "torch" and not has_torch():
        what = "--cpu-runtime torch" if settings.encoder_backend in ("auto", "cpu") \
            else f"--encoder-backend {settings.encoder_backend}"
        raise RuntimeUnavailable(f"{what} needs torch, which is not installed: "
                                 "pip install 'wyoming-amanuensis[torch]'")
    return runtime

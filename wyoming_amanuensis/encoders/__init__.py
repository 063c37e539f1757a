"""Encoder backends and the one place where one is chosen.

``select_backend`` takes ``auto|npu|cuda|cpu``; ``auto`` tries the NPU, then
CUDA, then the CPU, and logs why each one it skips was skipped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import Settings
from .base import EncoderBackend, EncoderOutput

if TYPE_CHECKING:
    from ..model.modules import AudioEncoder

# torch and the torch backends are imported where a torch backend is made, not with this
# package: the ONNX runtime's encoder shares base.py and must not pull them in.

_LOG = logging.getLogger(__name__)

__all__ = ["EncoderBackend", "EncoderOutput", "select_backend", "BackendUnavailable"]


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here; the message says why."""


def _try_npu(encoder: AudioEncoder, settings: Settings) -> EncoderBackend:
    try:
        from .npu import NpuEncoderBackend  # noqa: WPS433 (optional, heavy)
    except ImportError as err:
        raise BackendUnavailable(f"npu backend not available: {err}") from None
    return NpuEncoderBackend.open(encoder, settings)


def _try_cuda(encoder: AudioEncoder) -> EncoderBackend:
    import torch

    from .torch_backend import TorchEncoderBackend
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device visible to torch")
    return TorchEncoderBackend(encoder, "cuda")


def select_backend(encoder: AudioEncoder, settings: Settings) -> EncoderBackend:
    from .torch_backend import TorchEncoderBackend
    choice = settings.encoder_backend
    if choice == "cpu":
        return TorchEncoderBackend(encoder, "cpu", int8=settings.int8_encoder)
    if choice == "cuda":
        return _try_cuda(encoder)
    if choice == "npu":
        return _try_npu(encoder, settings)
    for name, attempt in (("npu", lambda: _try_npu(encoder, settings)), ("cuda", lambda: _try_cuda(encoder))):
        try:
            backend = attempt()
        except BackendUnavailable as err:
            _LOG.info("encoder backend auto: skipping %s: %s", name, err)
            continue
        _LOG.info("encoder backend auto: using %s", backend.name)
        return backend
    _LOG.info("encoder backend auto: using cpu")
    return TorchEncoderBackend(encoder, "cpu", int8=settings.int8_encoder)

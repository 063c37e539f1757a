"""The encoder backend interface: mel in, encoder states out. Torch-free: the ONNX runtime's
backend (``onnx_runtime/encoder.py``) speaks it too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np


@dataclass
class EncoderOutput:
    """What the encoder stage hands to the decoder, as is.

    ``features`` holds the encoder states of the positions actually encoded
    for this request ([1, P, d]); positions P..1499 of the 30 s window, when
    ``tail_cached`` is set, are the process-wide cached silence encoding, whose
    cross-attention keys/values the decoder already holds.
    """

    features: Any  # a torch tensor (torch backends) or a numpy array (onnx_runtime)
    tail_cached: bool
    backend: str
    npu_ms: float = 0.0
    fallback: bool = False


@runtime_checkable
class EncoderBackend(Protocol):
    """What the pipeline asks of an encoder. The torch backends (CPU, CUDA, NPU) also answer
    ``decoder_device`` and ``silence(silent_mel, chunk)``, which their loader
    (``model/torch_runtime.py``) uses at start-up; the ONNX runtime's computes its silence
    when its graphs are built."""

    name: str  # "cpu", "cuda" or "npu"

    def encode(self, mel: np.ndarray, context: Optional[Any] = None) -> EncoderOutput:
        """[1, n_mels, T] log-mel -> EncoderOutput with features [1, T/2, d] (tail_cached False).

        With ``context`` and T < 3000, every layer also attends to the pooled silence keys.
        """

    def stats(self) -> Optional[dict]:
        """Counters of a backend that has its own (telemetry publishes them), else None.

        The NPU's: precision, requests, fallbacks, launches, npu_busy_ms, disabled (bool),
        disabled_reason and last_error (str or None)."""

    def close(self) -> None:
        ...

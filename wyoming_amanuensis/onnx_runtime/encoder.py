"""The encoder backend on ONNX Runtime: log-mel in, encoder states out, numpy throughout."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..encoders.base import EncoderOutput
from ..model.whisper_spec import N_CTX_AUDIO, Dims
from .silence import SilenceContext


class OnnxEncoderBackend:
    """The flash-attention encoder graph (``graphs.build_encoder``) in one CPU session."""

    name = "cpu"

    def __init__(self, session: Any, dims: Dims):
        self.session, self.dims = session, dims
        hd = dims.width // dims.enc_heads
        self._no_context = np.zeros((dims.enc_layers, 1, dims.enc_heads, 0, hd), np.float32)

    def encode(self, mel: np.ndarray, context: Optional[SilenceContext] = None) -> EncoderOutput:
        """[1, n_mels, T] log-mel -> features [1, T/2, d] float32. With ``context`` and T < 3000,
        every layer also attends to the pooled silence keys (the full window never does)."""
        x = np.ascontiguousarray(mel, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] != 1 or x.shape[1] != self.dims.n_mels:
            raise ValueError(f"log-mel must be [1, {self.dims.n_mels}, T], got {x.shape}")
        p = (x.shape[2] + 1) // 2  # conv2 (stride 2, padding 1) halves T, rounding up
        if p > N_CTX_AUDIO:
            raise ValueError(f"encoder input of {p} positions exceeds the 30 s window ({N_CTX_AUDIO})")
        if context is not None and p < N_CTX_AUDIO:
            ek, ev, eb = context.stacked(p)
        else:
            ek, ev, eb = self._no_context, self._no_context, np.zeros(0, np.float32)
        (features,) = self.session.run(["features"], {"mel": x, "extra_k": ek, "extra_v": ev, "extra_bias": eb})
        return EncoderOutput(features=features, tail_cached=False, backend=self.name)

    def stats(self) -> None:
        """Nothing beyond the pipeline's own timings."""
        return None

    def close(self) -> None:
        self.session = None

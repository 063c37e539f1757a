"""The encoder backend interface: mel in, encoder states out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class EncoderOutput:
    """What the encoder stage hands to the decoder, as is.

    ``features`` holds the encoder states of the positions actually encoded
    for this request ([1, P, d]); positions P..1499 of the 30 s window, when
    ``tail_cached`` is set, are the process-wide cached silence encoding, whose
    cross-attention keys/values the decoder already holds.
    """

    features: torch.Tensor
    tail_cached: bool
    backend: str
    npu_ms: float = 0.0
    fallback: bool = False

    @property
    def positions(self) -> int:
        return int(self.features.shape[1])


@runtime_checkable
class EncoderBackend(Protocol):
    name: str  # "cpu", "cuda" or "npu"

    @property
    def decoder_device(self) -> torch.device:
        """Where the decoder should run to consume this backend's output without a copy."""

    def encode(self, mel: torch.Tensor) -> EncoderOutput:
        """[1, n_mels, T] log-mel -> EncoderOutput with features [1, T/2, d] (tail_cached False)."""

    def close(self) -> None:
        ...

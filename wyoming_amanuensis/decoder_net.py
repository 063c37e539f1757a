"""What the decoder's search (``decoding.py``) needs from the network that runs the weights.

The search is numpy; the network is whatever runs the decoder's layers: torch modules
(``model/torch_net.py``: CUDA, the NPU backend's CPU decoder, ``--cpu-runtime torch``) or
ONNX Runtime sessions (``onnx_runtime/network.py``: the default on the CPU, no torch in the
process). Across this line go token ids and positions one way, float32 numpy logits and
alignment weights the other; the audio (``CrossAttention``) and the self-attention cache
(``SelfCache``) are the network's own objects, which the search only passes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np


@dataclass
class CrossAttention:
    """One request's audio as the decoder attends to it: per layer the cross-attention keys
    and values of its positions (followed, after a short window, by the pooled silence tail,
    with its bias), in the network's own arrays. ``positions``: how many audio positions a
    row attends to (the width of its alignment weights)."""

    kv: Any
    positions: int


class SelfCache(Protocol):
    """The self-attention keys/values of the tokens fed so far, one row per sequence."""

    length: int  # positions filled

    def reorder(self, origins: Sequence[int]) -> None:
        """Beam search: row i becomes a copy of old row ``origins[i]`` (the row count may change)."""

    def fork(self, row: int, length: int, rows: int, max_len: Optional[int] = None) -> "SelfCache":
        """A new cache of ``rows`` rows, each holding the first ``length`` positions of ``row``."""


class DecoderNet(Protocol):
    def cross(self, features: Any, tail_cached: bool) -> CrossAttention:
        """This request's encoder output [1, P, d] -> its cross-attention keys/values, projected
        once; with ``tail_cached`` (a short window, P < 1500) the process-wide silence tail
        follows its P positions."""

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> SelfCache:
        """An empty cache for ``batch`` rows (``max_len``: at most that many positions; default the
        decoder's context)."""

    def step(self, tokens: Sequence[Sequence[int]], cache: SelfCache, cross: Sequence[CrossAttention],
             positions: Sequence[int], alignment: bool = False) -> tuple[np.ndarray, Optional[list[np.ndarray]]]:
        """Feed ``tokens`` [B rows][n] after ``cache.length`` cached positions (the cache grows by n).

        ``cross``: one CrossAttention per row, or one shared by all B rows (beams, readings of
        one request). ``positions``: which of the n fed positions to project onto the
        vocabulary (negative counts from the end; the projection is the costliest part of a
        step). Returns logits [B, len(positions), V] float32 (the search may write into
        them) and, with ``alignment``, per row the cross-attention weights of the model's
        alignment heads at every fed position, [heads, n, positions of that row's audio], or
        None where this network cannot record them for this call (the caller then runs a
        teacher-forced ``alignment_pass``)."""

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
    """Audio as the decoder attends to it: per layer the cross-attention keys and values of
    one request's positions (followed, after a short window, by the pooled silence tail, with
    its bias), in the network's own arrays; or, from ``DecoderNet.join``, several requests'
    for a batch, row b attending over request b's audio alone. ``rows``: 1, or the number
    of requests joined."""

    kv: Any
    rows: int = 1


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

    def join(self, crosses: Sequence[CrossAttention]) -> CrossAttention:
        """Several requests' audio for one batched decode: row b of a step attends over
        ``crosses[b]`` exactly as it would alone (its tokens must not depend on its batch)."""

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> SelfCache:
        """An empty cache for ``batch`` rows (``max_len``: at most that many positions; default the
        decoder's context)."""

    def step(self, tokens: Sequence[Sequence[int]], cache: SelfCache, cross: CrossAttention,
             positions: Sequence[int], alignment: bool = False) -> tuple[np.ndarray, Optional[list[np.ndarray]]]:
        """Feed ``tokens`` [B rows][n] after ``cache.length`` cached positions (the cache grows by n).

        ``cross``: one request's, shared by all B rows (its beams, readings of it), or B
        requests' joined. ``positions``: which of the n fed positions to project onto the
        vocabulary (negative counts from the end; the projection is the costliest part of a
        step). Returns logits [B, len(positions), V] float32 (the search may write into
        them) and, with ``alignment``, per row the cross-attention weights of the model's
        alignment heads at every fed position, [heads, n, positions of that row's audio], or
        None where this network cannot record them for this call (the caller then runs a
        teacher-forced ``alignment_pass``)."""

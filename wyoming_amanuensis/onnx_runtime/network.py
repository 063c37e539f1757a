"""The decoder network (``decoder_net.DecoderNet``) on ONNX Runtime sessions.

Two step graphs (``graphs.build_decoder``): "plain" for one request's audio shared by every row
(its beams, readings of it), which also returns the alignment heads' weights; "loop" for a
batch of joined requests, each row attending over its own audio inside an ONNX Loop, bitwise
what that row gets alone. The loop session is opened on the first joined step: a server that
never batches never pays its memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..decoder_net import CrossAttention
from ..model.whisper_spec import N_CTX_AUDIO, Dims
from .silence import SilenceTail


@dataclass
class _Audio:
    """One request's cross keys/values: per layer (k, v) [1, H, S, hd], bias [S]."""

    kv: list[tuple[np.ndarray, np.ndarray]]
    bias: np.ndarray


@dataclass
class _Joined:
    """Several requests' audio concatenated along S: per layer (k, v) [1, H, sum S_b, hd],
    bias [sum S_b], and offsets [B + 1]: row b attends over positions off[b]..off[b+1]."""

    kv: list[tuple[np.ndarray, np.ndarray]]
    bias: np.ndarray
    offsets: np.ndarray


class OnnxSelfCache:
    """The self-attention keys/values fed so far: per layer (k, v) [rows, H, length, hd].

    The step graph takes the past and returns past + new (a Concat), so a cache is a list of
    arrays replaced after every step, not a preallocated buffer; ``max_len`` only bounds it."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], length: int, max_len: int):
        self.layers, self.length, self.max_len = layers, length, max_len

    @property
    def rows(self) -> int:
        return self.layers[0][0].shape[0]

    def reorder(self, origins: Sequence[int]) -> None:
        index = np.asarray(origins, dtype=np.int64)
        if index.shape[0] == self.rows and np.array_equal(index, np.arange(self.rows)):
            return  # the identity (greedy, or beams that all kept their place): nothing to copy
        self.layers = [(k[index], v[index]) for k, v in self.layers]

    def fork(self, row: int, length: int, rows: int, max_len: Optional[int] = None) -> "OnnxSelfCache":
        if not 0 <= length <= self.length:
            raise ValueError(f"fork of {length} positions from a cache of {self.length}")
        layers = [(np.repeat(k[row:row + 1, :, :length], rows, axis=0),
                   np.repeat(v[row:row + 1, :, :length], rows, axis=0)) for k, v in self.layers]
        return OnnxSelfCache(layers, length, max_len or self.max_len)


class OnnxDecoderNet:
    """``DecoderNet`` over the cross-projection and step sessions of one built model.

    ``sessions``: opens a built graph by name ("cross", "decoder", "decoder_loop")."""

    def __init__(self, dims: Dims, alignment_heads: Sequence[tuple[int, int]], open_session: Callable[[str], Any],
                 tail: Optional[SilenceTail]):
        self.dims = dims
        self.alignment_heads = list(alignment_heads)
        self.H, self.hd, self.L = dims.dec_heads, dims.width // dims.dec_heads, dims.dec_layers
        self._open = open_session
        self.cross_session = open_session("cross")
        self.step_session = open_session("decoder")
        self._loop_session = None
        self._loop_lock = threading.Lock()
        self.tail = tail
        self._outputs = [o.name for o in self.step_session.get_outputs()]

    @classmethod
    def from_folder(cls, folder: Path, dims: Dims, alignment_heads, session: Callable[[Path], Any],
                    tail: Optional[SilenceTail]) -> "OnnxDecoderNet":
        return cls(dims, alignment_heads, lambda name: session(folder / f"{name}.onnx"), tail)

    def _loop(self):
        with self._loop_lock:
            if self._loop_session is None:
                self._loop_session = self._open("decoder_loop")
            return self._loop_session

    # --- DecoderNet -------------------------------------------------------------------------

    def cross(self, features: Any, tail_cached: bool) -> CrossAttention:
        feats = np.ascontiguousarray(features, dtype=np.float32)
        p = feats.shape[1]
        outs = self.cross_session.run(None, {"features": feats})
        kv = [(outs[2 * i], outs[2 * i + 1]) for i in range(self.L)]
        bias = np.zeros(p, np.float32)
        if tail_cached and p < N_CTX_AUDIO and self.tail is not None:
            parts = self.tail.after(p)
            kv = [(np.concatenate((k, tk), axis=2), np.concatenate((v, tv), axis=2))
                  for (k, v), (tk, tv, _) in zip(kv, parts)]
            bias = np.concatenate((bias, parts[0][2]))
        return CrossAttention(_Audio(kv, bias), rows=1)

    def join(self, crosses: Sequence[CrossAttention]) -> CrossAttention:
        if len(crosses) == 1:
            return crosses[0]
        audio = []
        for c in crosses:
            if c.rows != 1 or not isinstance(c.kv, _Audio):
                raise ValueError("join takes single requests' cross-attention, not joined ones")
            audio.append(c.kv)
        lengths = [a.bias.shape[0] for a in audio]
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        kv = [(np.concatenate([a.kv[i][0] for a in audio], axis=2), np.concatenate([a.kv[i][1] for a in audio], axis=2))
              for i in range(self.L)]
        return CrossAttention(_Joined(kv, np.concatenate([a.bias for a in audio]), offsets), rows=len(crosses))

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> OnnxSelfCache:
        empty = np.zeros((batch, self.H, 0, self.hd), np.float32)
        return OnnxSelfCache([(empty, empty) for _ in range(self.L)], 0,
                             min(max_len or self.dims.n_text_ctx, self.dims.n_text_ctx))

    def step(self, tokens: Sequence[Sequence[int]], cache: OnnxSelfCache, cross: CrossAttention,
             positions: Sequence[int], alignment: bool = False) -> tuple[np.ndarray, Optional[list[np.ndarray]]]:
        toks = np.asarray(tokens, dtype=np.int64)
        if toks.ndim != 2:
            raise ValueError(f"tokens must be [rows][n], got shape {toks.shape}")
        B, n = toks.shape
        start = cache.length
        if start + n > self.dims.n_text_ctx:
            raise ValueError(f"decoder context overflow: {start + n} > {self.dims.n_text_ctx} tokens")
        if start + n > cache.max_len:
            raise ValueError(f"self-attention cache overflow: {start + n} > {cache.max_len} positions")
        if B != cache.rows:
            raise ValueError(f"{B} token rows for a cache of {cache.rows} rows")
        feeds = {"tokens": toks, "offset": np.array([start], np.int64),
                 "positions": np.asarray(positions, dtype=np.int64).reshape(-1)}
        for i, (k, v) in enumerate(cache.layers):
            feeds[f"past_k{i}"], feeds[f"past_v{i}"] = k, v
        audio = cross.kv
        joined = isinstance(audio, _Joined)
        if joined and B != cross.rows:
            raise ValueError(f"{B} token rows for {cross.rows} joined requests")
        for i, (k, v) in enumerate(audio.kv):
            feeds[f"cross_k{i}"], feeds[f"cross_v{i}"] = k, v
        feeds["cross_bias"] = audio.bias
        if joined:
            feeds["cross_off"] = audio.offsets
            outs = self._loop().run(None, feeds)
        else:
            outs = self.step_session.run(None if alignment else self._outputs[:-1], feeds)
        cache.layers = [(outs[1 + 2 * i], outs[2 + 2 * i]) for i in range(self.L)]
        cache.length = start + n
        weights = list(outs[-1]) if alignment and not joined else None
        return outs[0], weights

"""The 30 s window's silence on numpy: ``model/silence.py``'s PooledTail and SilenceContext
without torch (that module explains why a short window needs them).

The pooled arrays are held in RAM; the exact positions between a request's window end and the
next chunk boundary are read per request with os.pread from the stored .npy (``NpyRows``): a
short request needs a few positions of each array, and mapping the files instead made whole
large folios resident (2.6 of 3 MB per array for a 4-position read, measured in session 7's
prototype, RESULTS.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from ..model.whisper_spec import N_CTX_AUDIO


class NpyRows:
    """A [1, H, N, hd] float32 C-order .npy file, read by position range: ``rows[a:b]`` is
    [1, H, b - a, hd]. The file stays open for the process (one pread per head)."""

    def __init__(self, path: Union[str, Path]):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            self.offset = f.tell()
        if dtype != np.float32 or fortran or len(shape) != 4 or shape[0] != 1:
            raise ValueError(f"{path}: not a [1, H, N, hd] float32 C-order array ({dtype}, {shape})")
        self.shape = tuple(shape)
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, a: int, b: int) -> np.ndarray:
        _, H, N, hd = self.shape
        a, b = max(0, min(a, N)), max(0, min(b, N))
        out = np.empty((1, H, max(0, b - a), hd), np.float32)
        if b <= a:
            return out
        size = (b - a) * hd * 4
        for h in range(H):
            raw = os.pread(self.fd, size, self.offset + (h * N + a) * hd * 4)
            if len(raw) != size:
                raise OSError(f"short read from a silence array ({len(raw)} of {size} bytes)")
            out[0, h] = np.frombuffer(raw, np.float32).reshape(b - a, hd)
        return out

    def whole(self) -> np.ndarray:
        return self.read(0, self.shape[2])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


class PooledTail:
    """Keys/values [1, H, 1500, hd] of the silence window, one mean key/value per chunk of
    ``chunk`` positions carrying log(count) as an attention bias; ``from_position(p)`` keeps the
    positions from p to the next chunk boundary exact (read from ``exact_k``/``exact_v``)."""

    def __init__(self, exact_k: NpyRows, exact_v: NpyRows, chunk: int):
        self.k, self.v, self.chunk = exact_k, exact_v, max(1, int(chunk))
        k, v = exact_k.whole(), exact_v.whole()  # once, for pooling; only the pooled arrays stay
        n, c = k.shape[2], self.chunk
        m = -(-n // c)
        pad = m * c - n
        counts = np.full((m,), float(c), np.float32)
        counts[-1] = c - pad

        def pool(x: np.ndarray) -> np.ndarray:
            x = np.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(*x.shape[:2], m, c, x.shape[-1]).sum(3)
            return np.ascontiguousarray(x / counts[:, None])
        self.pooled_k, self.pooled_v, self.log_counts = pool(k), pool(v), np.log(counts).astype(np.float32)

    def from_position(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys, values [1, H, e, hd] standing for positions p..end, and their bias [e]."""
        j = -(-p // self.chunk)
        exact = j * self.chunk - p
        k = np.concatenate((self.k.read(p, p + exact), self.pooled_k[:, :, j:]), axis=2)
        v = np.concatenate((self.v.read(p, p + exact), self.pooled_v[:, :, j:]), axis=2)
        bias = np.concatenate((np.zeros(exact, np.float32), self.log_counts[j:])).astype(np.float32)
        return k, v, bias


class SilenceContext:
    """Each encoder layer's silence keys/values, pooled: what a short window's layers also
    attend to. ``stacked(P)`` is the encoder graph's extra_k/extra_v [L, 1, H, E, hd] and
    extra_bias [E] for a window of P positions."""

    def __init__(self, layers: list[PooledTail]):
        self.layers = layers

    def stacked(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [t.from_position(p) for t in self.layers]
        return (np.stack([k for k, _, _ in parts]), np.stack([v for _, v, _ in parts]), parts[0][2])


class SilenceTail:
    """Each decoder layer's cross keys/values of the silence window's encoder output, pooled:
    what follows a short window's P positions in cross-attention."""

    def __init__(self, layers: list[PooledTail]):
        self.layers = layers

    def after(self, p: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per layer (keys, values, bias) for positions p..1499."""
        if p >= N_CTX_AUDIO:
            return []
        return [t.from_position(p) for t in self.layers]

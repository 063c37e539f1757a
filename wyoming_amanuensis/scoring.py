"""The search's arithmetic on numpy float32, written as torch's CPU kernels do it.

The decoder's search (``decoding.py``, ``timestamps.py``, ``biasing.py``) runs on numpy so
that only the network is torch: the CPU runtime will swap the network and keep the search.
The softmax family follows the formula and the order of operations of the torch kernel
it replaces (aten/src/ATen/native/cpu/SoftMaxKernel.cpp, ReduceOps' logsumexp), all in
float32, so that no near tie tips the other way: what may differ is the last bit of an
``exp`` or of a sum's order, never the formula.
"""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis: ``(x - max) - log(sum(exp(x - max)))``, in that order (torch's
    kernel subtracts the two one after the other: adding them first loses digits)."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis: ``exp(x - max) * (1 / sum)``, a multiply by the reciprocal as torch's kernel."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e * (np.float32(1) / e.sum(axis=-1, keepdims=True))


def logsumexp(x: np.ndarray) -> np.ndarray:
    """Over the last axis: ``log(sum(exp(x - m))) + m``, with m the maximum, or 0 where that is
    infinite (torch's rule: a row of -inf gives -inf, not nan)."""
    m = x.max(axis=-1)
    m = np.where(np.isinf(m), np.float32(0), m).astype(x.dtype)
    with np.errstate(divide="ignore"):  # log(0) = -inf is the answer for a row of -inf
        return np.log(np.exp(x - m[..., None]).sum(axis=-1)) + m


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the ``k`` largest of the 1-D ``x`` (no nan), largest first, equal
    values in the order of their indices.

    Where the values differ this is torch.topk's answer. torch orders equal values as its
    heap happens to leave them; a rule of our own is simpler and keeps the search's
    decisions reproducible without torch (exact ties among the beam's best candidates did
    not occur on either corpus: benchmarks/RESULTS.md, session 7)."""
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return x[:0], np.zeros(0, dtype=np.int64)
    kth = x[_largest(x, k)].min()  # the k-th largest value
    chosen = np.concatenate([np.flatnonzero(x > kth), np.flatnonzero(x == kth)])[:k]
    order = chosen[np.argsort(-x[chosen], kind="stable")]  # stable: equal values keep index order
    return x[order], order.astype(np.int64)


def _largest(x: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest of ``x`` in no order. A partition of a sixteenth of ``x``
    bounds them from below, so that only the few at or above the bound are partitioned:
    several times faster than partitioning all of a beam's scores."""
    n = x.shape[0]
    sample = x[::16]
    if sample.shape[0] > m:
        bound = np.partition(sample, sample.shape[0] - m)[sample.shape[0] - m]
        candidates = np.flatnonzero(x >= bound)
        return candidates[np.argpartition(x[candidates], candidates.shape[0] - m)[candidates.shape[0] - m:]]
    return np.argpartition(x, n - m)[n - m:]

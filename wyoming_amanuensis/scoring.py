"""The search's arithmetic on numpy float32, written as torch's CPU kernels do it.

The decoder's search (``decoding.py``, ``timestamps.py``, ``biasing.py``) runs on numpy so
that only the network is torch: the CPU runtime will swap the network and keep the search.
Each function here follows the formula and the order of operations of the torch kernel
it replaces (aten/src/ATen/native/cpu/SoftMaxKernel.cpp, ReduceOps' logsumexp, TopKImpl.h),
all in float32, so that no near tie tips the other way: what may differ is the last bit of
an ``exp`` or of a sum's order, never the formula.
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
    """(values, indices) of the ``k`` largest of the 1-D ``x``, largest first, in torch.topk's
    order on the CPU, ties included.

    Where the ``k + 1`` largest are all different the answer is unique and a partition finds
    it. With ties, torch's order is not the indices' order but what libstdc++'s
    ``std::partial_sort`` (a heap) leaves, which ``_partial_sort`` reproduces step by step:
    the beam's candidates, the ones allowed to finish and the finished readings' order
    would otherwise differ from today's on an exact tie."""
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return x[:0], np.zeros(0, dtype=np.int64)
    head = _largest(x, k + 1) if k < n else np.arange(n)
    order = head[np.argsort(-x[head], kind="stable")]
    values = x[order]
    if np.all(values[:-1] > values[1:]):
        return values[:k], order[:k].astype(np.int64)
    if k * 64 > n:
        # torch then takes std::nth_element and a sort instead, whose order of ties is not
        # reproduced here; the search never asks (2 * beam <= 32 against 51865 and more)
        raise ValueError(f"ties in the top {k} of {n}: torch's order is reproduced for k * 64 <= n only")
    return _partial_sort(x, k)


def _largest(x: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest of ``x`` in no order (nan counting as largest). A partition
    of a sixteenth of ``x`` bounds them from below, so that only the few at or above the bound
    are partitioned: several times faster than partitioning all of a beam's scores."""
    n = x.shape[0]
    sample = x[::16]
    if sample.shape[0] > m:
        bound = np.partition(sample, sample.shape[0] - m)[sample.shape[0] - m]
        candidates = np.flatnonzero(~(x < bound))  # at or above the bound, and any nan
        return candidates[np.argpartition(x[candidates], candidates.shape[0] - m)[candidates.shape[0] - m:]]
    return np.argpartition(x, n - m)[n - m:]


def _ranks_before(a: float, b: float) -> bool:
    """torch.topk's comparator (largest): nan first, then the greater value."""
    return (a != a and b == b) or a > b


def _adjust_heap(heap: list, hole: int, length: int, value: tuple) -> None:
    """libstdc++'s ``std::__adjust_heap`` then ``std::__push_heap`` (bits/stl_heap.h)."""
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _ranks_before(heap[child][0], heap[child - 1][0]):
            child -= 1
        heap[hole] = heap[child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        heap[hole] = heap[child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and _ranks_before(heap[parent][0], value[0]):
        heap[hole] = heap[parent]
        hole = parent
        parent = (hole - 1) // 2
    heap[hole] = value


def _partial_sort(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``std::partial_sort(first, first + k, last, comp)`` of libstdc++ (``__heap_select``
    then ``__sort_heap``) leaves in the first k places: torch.topk's CPU path whenever
    ``k * 64 <= n``, which the search's ``2 * beam`` always is for a Whisper vocabulary."""
    n = x.shape[0]
    heap = [(float(x[i]), i) for i in range(k)]
    if k >= 2:  # __make_heap
        for parent in range((k - 2) // 2, -1, -1):
            _adjust_heap(heap, parent, k, heap[parent])
    # __heap_select: an element enters when it ranks before the heap's root (the worst kept);
    # the root only ever improves, so a chunk's elements that do not beat it now never will
    chunk = 8192
    for start in range(k, n, chunk):
        block = x[start:start + chunk]
        root = heap[0][0]
        if root != root:  # nothing ranks before a nan
            break
        beats = np.flatnonzero((block > root) | np.isnan(block))
        for j in beats.tolist():
            value = (float(block[j]), start + j)
            if _ranks_before(value[0], heap[0][0]):
                _adjust_heap(heap, 0, k, value)
    for last in range(k - 1, 0, -1):  # __sort_heap
        value = heap[last]
        heap[last] = heap[0]
        _adjust_heap(heap, 0, last, value)
    return (np.array([v for v, _ in heap], dtype=x.dtype), np.array([i for _, i in heap], dtype=np.int64))

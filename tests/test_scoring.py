"""The search's numpy arithmetic (scoring.py) against the torch kernels it replaced: topk as
torch.topk where values differ, equal values by index; the softmax family to float32 rounding,
with the same maxima; and the timestamp rules and name bonuses on numpy arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wyoming_amanuensis.biasing import NameBoost, NameTrie
from wyoming_amanuensis.scoring import log_softmax, logsumexp, softmax, topk
from wyoming_amanuensis.timestamps import TimestampRules

VOCAB = 51865


def _torch_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    top = torch.topk(torch.from_numpy(x), k)
    return top.values.numpy(), top.indices.numpy()


def _by_value_then_index(x: np.ndarray, k: int) -> list[int]:
    return np.lexsort((np.arange(x.shape[0]), -x))[:k].tolist()


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("k", [2, 6, 10])
def test_topk_is_torchs_without_ties_and_orders_ties_by_index(rows, k):
    rng = np.random.default_rng(rows * 100 + k)
    n = rows * VOCAB
    distinct = rng.standard_normal(n).astype(np.float32)
    values, indices = topk(distinct, k)
    want_values, want_indices = _torch_topk(distinct, k)
    assert indices.tolist() == want_indices.tolist() and np.array_equal(values, want_values)
    sparse = np.full(n, -np.inf, dtype=np.float32)  # fewer finite values than k: ties at -inf
    sparse[rng.integers(0, n, k // 2)] = rng.integers(0, 2, k // 2)
    near = rng.standard_normal(n).astype(np.float32)  # ties inside the top k and at its edge
    best = np.argsort(-near, kind="stable")[:k + 1]
    near[best[1]] = near[best[0]]
    near[rng.integers(0, n, 3)] = near[best[0]]
    near[rng.integers(0, n, 2)] = near[best[k]]
    for x in (rng.integers(0, 4, n).astype(np.float32), np.zeros(n, dtype=np.float32), sparse, near):
        values, indices = topk(x, k)
        assert indices.tolist() == _by_value_then_index(x, k)
        assert np.array_equal(values, x[indices])


def test_topk_small_and_whole():
    x = np.array([1.0, 4.0, 3.0, 2.0], dtype=np.float32)
    assert topk(x, 10)[1].tolist() == [1, 2, 3, 0]
    assert topk(x, 2)[1].tolist() == [1, 2]
    assert topk(x, 0)[1].tolist() == []
    assert topk(np.array([1.0, 3.0, 3.0, 2.0], dtype=np.float32), 2)[1].tolist() == [1, 2]


def test_softmax_family_matches_torch():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, VOCAB)) * 4).astype(np.float32)
    x[:, 50257:] = -math.inf  # suppressed, as the masks leave them
    t = torch.from_numpy(x)
    ours, theirs = log_softmax(x), torch.log_softmax(t, dim=-1).numpy()
    assert ours.dtype == np.float32
    finite = np.isfinite(theirs)
    assert np.array_equal(finite, np.isfinite(ours))
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=0, atol=2e-5)
    assert ours.argmax(axis=-1).tolist() == theirs.argmax(axis=-1).tolist()
    np.testing.assert_allclose(softmax(x), torch.softmax(t, dim=-1).numpy(), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(logsumexp(x[:, 100:]), torch.logsumexp(t[:, 100:], dim=-1).numpy(), rtol=1e-6)
    empty = np.full((2, 8), -math.inf, dtype=np.float32)
    assert logsumexp(empty).tolist() == torch.logsumexp(torch.from_numpy(empty), dim=-1).tolist()


def test_timestamp_rules_on_numpy():
    begin, eot, no_ts, vocab = 100, 50, 99, 200
    rules = TimestampRules(begin, eot, no_ts)
    logits = np.zeros((3, vocab), dtype=np.float32)
    logits[2, begin + 5] = 30.0  # a timestamp so likely that one must be taken
    out = rules.apply(logits, [[], [begin, 7, begin + 3, begin + 3], [begin, 7]])
    assert out is logits and out.dtype == np.float32
    assert np.isneginf(out[:, no_ts]).all()
    # nothing yet: a timestamp within the first second, no text
    assert np.isneginf(out[0, :begin]).all() and np.isneginf(out[0, rules.max_initial + 1:]).all()
    assert np.isfinite(out[0, begin:rules.max_initial + 1]).all()
    # a pair just closed: text or end of text, no timestamp
    assert np.isneginf(out[1, begin:]).all() and np.isfinite(out[1, :no_ts]).all()
    # text after a timestamp, the timestamps outweigh it: a later timestamp only
    assert np.isneginf(out[2, :begin]).all() and np.isneginf(out[2, begin:begin + 1]).all()
    assert np.isfinite(out[2, begin + 1:]).all()


class _Tokenizer:
    def encode(self, text: str) -> list[int]:
        return {" Bed Light": [5, 6], " bed light": [7, 8]}[text]


def test_name_boost_scores_on_numpy():
    trie = NameTrie(_Tokenizer(), ("Bed Light",))
    start = np.zeros(10, dtype=np.float32)
    start[trie.starts] = 1.5
    boost = NameBoost(trie=trie, start=start, bonus=3.0)
    logp = np.full((2, 10), -2.0, dtype=np.float32)
    out = boost.scores(logp[0], [1, 5])
    assert out.dtype == np.float32 and logp[0].tolist() == [-2.0] * 10  # a new array
    assert out[[5, 7]].tolist() == [-0.5, -0.5] and out[6] == 1.0  # starts; continues " Bed"
    assert out[[0, 1, 2, 3, 4, 8, 9]].tolist() == [-2.0] * 7
    both = boost.scores(logp, [5])
    assert both.shape == (2, 10) and both[1].tolist() == out.tolist()

"""Alignment stage (optional): word timestamps from the decoder's cross-attention.

The alignment heads listed in the model's config.json attend to the audio
frame each text token was read from; DTW through their averaged attention
gives a monotonic token -> time path. One encoder position is 20 ms.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter

from .model.tokenizer import WhisperTokenizer
from .result import Word

SECONDS_PER_POSITION = 0.02
MEDIAN_WIDTH = 7
# languages written without spaces: every token is its own word
_NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic path through ``cost`` [N, M]; returns (row indices, column indices)."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    for i in range(1, n + 1):
        row = cost[i - 1]
        for j in range(1, m + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 <= c1 and c0 <= c2:
                acc[i, j], trace[i, j] = row[j - 1] + c0, 0
            elif c1 <= c2:
                acc[i, j], trace[i, j] = row[j - 1] + c1, 1
            else:
                acc[i, j], trace[i, j] = row[j - 1] + c2, 2
    i, j = n, m
    rows, cols = [], []
    while i > 0 and j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


def split_words(tokens: list[int], tok: WhisperTokenizer, language: str | None) -> tuple[list[str], list[list[int]]]:
    words: list[str] = []
    groups: list[list[int]] = []
    for t in tokens:
        piece = tok.decode_piece([t])
        starts_word = language in _NO_SPACE_LANGUAGES or piece.startswith(" ") or not groups
        if starts_word:
            words.append(piece)
            groups.append([t])
        else:
            words[-1] += piece
            groups[-1].append(t)
    return words, groups


def word_timestamps(weights: np.ndarray, tokens: list[int], tok: WhisperTokenizer, positions: int,
                    language: str | None) -> list[Word]:
    """``weights`` [heads, len(tokens) + 1, 1500]: attention rows predicting each text token and end-of-text."""
    if not tokens:
        return []
    positions = max(1, min(positions, weights.shape[-1]))
    w = np.asarray(weights[:, :, :positions], dtype=np.float32)
    w = w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-12)  # renormalise over the audio actually heard
    mean = w.mean(axis=-2, keepdims=True)
    std = w.std(axis=-2, keepdims=True)
    w = (w - mean) / np.maximum(std, 1e-8)
    w = median_filter(w, size=(1, 1, MEDIAN_WIDTH))
    matrix = w.mean(axis=0)
    text_idx, time_idx = dtw(-matrix)
    words, groups = split_words(tokens, tok, language)
    bounds = np.concatenate(([0], np.cumsum([len(g) for g in groups])))
    jumps = np.concatenate(([True], np.diff(text_idx) > 0))
    jump_times = time_idx[jumps] * SECONDS_PER_POSITION
    out = []
    for k, word in enumerate(words):
        start = float(jump_times[bounds[k]])
        end = float(jump_times[min(bounds[k + 1], len(jump_times) - 1)])
        out.append(Word(word=word.strip(), start=round(start, 3), end=round(max(end, start), 3)))
    return out

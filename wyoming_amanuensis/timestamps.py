"""Timestamp tokens: the rules that keep them well-formed while decoding, and the segments they delimit.

Long audio is decoded window by window (``windows.py``) with Whisper's
timestamp tokens (``<|0.00|>`` .. ``<|30.00|>``, 0.02 s apart), which is how
the model was trained to mark where each segment of text starts and ends.
``TimestampRules`` is openai-whisper's ``ApplyTimestampRules`` (timestamps
come in pairs, never go backwards, the first within 1 s); ``segments`` and
``seek_after`` are its transcribe loop's reading of the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .scoring import log_softmax, logsumexp

SECONDS_PER_TIMESTAMP = 0.02
# openai-whisper's default: the first segment starts within the first second of the window
MAX_INITIAL_TIMESTAMP_S = 1.0


class TimestampRules:
    """Masks logits [B, V] (float32 numpy) in place so that every row's continuation keeps the timestamp grammar."""

    def __init__(self, timestamp_begin: int, eot: int, no_timestamps: int):
        self.begin = timestamp_begin
        self.eot = eot
        self.no_timestamps = no_timestamps
        self.max_initial = timestamp_begin + round(MAX_INITIAL_TIMESTAMP_S / SECONDS_PER_TIMESTAMP)

    def apply(self, logits: np.ndarray, sequences: list[list[int]]) -> np.ndarray:
        begin = self.begin
        logits[:, self.no_timestamps] = -math.inf
        for row, seq in enumerate(sequences):
            last_ts = len(seq) >= 1 and seq[-1] >= begin
            penultimate_ts = len(seq) < 2 or seq[-2] >= begin
            if last_ts:
                if penultimate_ts:  # a pair just closed: text (or end of text) must follow
                    logits[row, begin:] = -math.inf
                else:  # a segment just ended: its pair's second timestamp, or end of text
                    logits[row, :self.eot] = -math.inf
            stamps = [t for t in seq if t >= begin]
            if stamps:
                # never go backwards; a new segment starts strictly after the last one's end
                floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
                logits[row, begin:floor] = -math.inf
            else:
                logits[row, :begin] = -math.inf  # the window starts with a timestamp
                logits[row, self.max_initial + 1:] = -math.inf
        # when the timestamps together outweigh the likeliest text token, take a timestamp
        logp = log_softmax(logits.astype(np.float32, copy=False))
        stamp = logsumexp(logp[:, begin:])
        text = logp[:, :begin].max(axis=-1)
        for row in np.flatnonzero(stamp > text).tolist():
            logits[row, :begin] = -math.inf
        return logits


@dataclass
class Segment:
    start: float  # seconds from the start of its window
    end: float
    tokens: list[int]  # text tokens only


def _segment(tokens: list[int], begin: int) -> Segment:
    stamps = [t for t in tokens if t >= begin]
    text = [t for t in tokens if t < begin]
    start = (stamps[0] - begin) * SECONDS_PER_TIMESTAMP if stamps else 0.0
    end = (stamps[-1] - begin) * SECONDS_PER_TIMESTAMP if len(stamps) > 1 else start
    return Segment(start=start, end=end, tokens=text)


def segments(tokens: list[int], begin: int, window_frames: int, frames_per_timestamp: int = 2) -> tuple[list[Segment], int]:
    """(complete segments of one window's decoded tokens, mel frames to seek forward).

    openai-whisper's rule: where two timestamps meet (the end of one segment and
    the start of the next), a segment ends. If the window's tokens end with a
    lone timestamp (the last segment closed, then nothing), or hold no
    complete segment, all of it is kept and the whole window consumed;
    otherwise the text after the last complete segment is left out and the
    next window starts at that segment's end, so that a word cut by the
    window's edge is decoded again whole."""
    is_ts = [t >= begin for t in tokens]
    single_ending = len(tokens) >= 2 and is_ts[-2:] == [False, True]
    joins = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    if joins:
        cuts = joins + ([len(tokens)] if single_ending else [])
        out, last = [], 0
        for cut in cuts:
            out.append(_segment(tokens[last:cut], begin))
            last = cut
        if single_ending:
            return out, window_frames
        last_stamp = tokens[last - 1] - begin
        return out, last_stamp * frames_per_timestamp
    seg = _segment(tokens, begin)
    stamps = [t for t in tokens if t >= begin]
    if stamps and stamps[-1] != begin:
        seg.end = (stamps[-1] - begin) * SECONDS_PER_TIMESTAMP
    return ([seg] if seg.tokens else []), window_frames

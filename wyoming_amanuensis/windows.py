"""Long audio: consecutive 30 s windows that seek by the decoded timestamps.

Whisper hears 30 s at a time. An utterance longer than that (a dictated note,
a request to a language model) is decoded as openai-whisper's transcribe loop
does it: each window is decoded with timestamp tokens, its complete segments
are kept, and the next window starts where the last complete segment ended
(``timestamps.segments``), so a word cut by a window's edge is heard again
whole in the next window instead of being lost or doubled. The language is
detected once, on the first window. When the rest of the audio fits in one
window, that last window is the short one of the fast decoder (the speech
plus a margin, spliced onto the cached silence), like any short command.
Changes from openai's loop, each for sentences it lost or invented on the
corpus's long utterances (benchmarks/bench_long.py): a window whose text
closes well before its end is resumed there (``_resume_early_end``); a pause
the model placed over loud audio is where the next window starts
(``_skipped_speech``); a last segment at the window's edge is left to the
next window (``_hold_back_edge``); a segment over no audible speech is
dropped. Windows with audio after them are kept per utterance
(``Job.windows``) so that its partials, speculations and final decode each
of them once.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import align
from .audio import SAMPLE_RATE
from .decoding import DecodeOptions, DecodeResult, max_tokens_for
from .mel import FRAMES_PER_SECOND, HOP, N_FRAMES_30S, log_mel
from .result import Word
from .timestamps import segments

WINDOW_SAMPLES = N_FRAMES_30S * HOP
# A window whose text ends this long before the window does is resumed at that end (_resume_early_end).
RESUME_AFTER_FRAMES = 2 * FRAMES_PER_SECOND
# A window's last segment that ends this close to the window's end is decoded again by the next
# window (_hold_back_edge); chosen by measurement in benchmarks.bench_long (RESULTS.md).
HOLD_BACK_FRAMES = FRAMES_PER_SECOND
# A pause the model placed between two segments holds a skipped sentence (_skipped_speech) when this
# much of it, away from its ends by _MARGIN_S, is within _LOUD_DB of the window's loud frames.
_SPEECH_S = 0.3
_MARGIN_S = 0.3
_LOUD_DB = 20.0
_LEVELS_PER_S = 50  # 20 ms, one timestamp step
# A segment with less than this at speech level was not heard but invented.
_HEARD_S = 0.1
# A held-back segment (_hold_back_edge) starts the next window at the quietest _QUIET_SPAN_S of the
# _SNAP_BACK_S before the start the model gave it.
_SNAP_BACK_S = 2.0
_QUIET_SPAN_S = 0.2
# Below this peak a window is digital silence (the same threshold as pipeline.SILENCE_PEAK).
_SILENT_PEAK = 1e-4


@dataclass
class Windowed:
    """What the windows decoded, joined."""

    tokens: list[int] = field(default_factory=list)  # text tokens of every kept segment, in order
    language: Optional[str] = None
    windows: int = 0
    words: list[Word] = field(default_factory=list)
    cached: int = 0  # windows taken from the utterance's cache


def is_long(samples: int) -> bool:
    return samples > WINDOW_SAMPLES


def decode_windows(loaded, audio: np.ndarray, options: DecodeOptions, *, frames_for: Callable[[int], int],
                   stage: Callable[[str], AbstractContextManager], condition: bool, want_words: bool,
                   cache: Optional[dict] = None) -> Windowed:
    """``loaded``: the pipeline's LoadedModel; ``frames_for(samples)``: mel frames the short last
    window encodes (the fast decoder's rule); ``stage(name)`` times a stage; ``condition``: each
    window's prompt carries the text decoded so far (openai's condition_on_previous_text);
    ``cache``: one utterance's decoded windows (see ``Job.windows``), read and filled."""
    model, decoder = loaded.model, loaded.decoder
    begin = model.tokenizer.timestamp_begin
    content = int(math.ceil(audio.shape[0] / HOP))  # mel frames of audio
    out = Windowed(language=options.language)
    seek = 0
    while seek < content:
        if options.stop is not None and options.stop():
            break
        start = seek * HOP
        chunk = audio[start:start + WINDOW_SAMPLES]
        size = min(N_FRAMES_30S, content - seek)
        if chunk.size == 0 or float(np.abs(chunk).max()) < _SILENT_PEAK:
            seek += size
            continue
        opts = _window_options(options, out, condition, size)
        # A window with audio after it is heard whole: later runs over the same utterance
        # (the next partial, the final) decode it the same way, so they take it from the cache.
        key = None
        if cache is not None and content - seek > N_FRAMES_30S and options.boost is None and not want_words:
            key = (model.name, seek, tuple(opts.prompt_tokens), opts.language, opts.beam_size, opts.beam_size_other)
        if key is not None and key in cache:
            tokens, language, silent = cache[key]
            out.cached += 1
        else:
            with stage("mel"):
                frames = frames_for(chunk.shape[0]) if content - seek <= N_FRAMES_30S else N_FRAMES_30S
                mel = log_mel(chunk, model.dims.n_mels, n_frames=frames)[None]
            with stage("encoder"):
                enc = loaded.backend.encode(mel, loaded.context)
                enc.tail_cached = frames < N_FRAMES_30S
            with stage("decoder"):
                cross = decoder.prepare(enc)
                dec = decoder.decode(cross, opts)
            if options.stop is not None and options.stop():
                break  # a search stopped early is not this window's text
            tokens, language, silent = dec.tokens, dec.language, dec.is_silence
            if key is not None:
                cache[key] = (tokens, language, silent)
        out.windows += 1
        out.language = out.language or language
        if silent:
            seek += size
            continue
        kept, advance = segments(tokens, begin, size)
        # A segment over no audible speech is invented: the short last window's cached silence
        # grew repeats of earlier commands past the end of the audio, or just inside it.
        levels = _Levels.of(chunk)
        kept = [s for s in kept if levels.loud_s(s.start, s.end, margin_s=0.0) >= _HEARD_S]
        skipped = _skipped_speech(kept, levels)
        if skipped is not None:
            kept, advance = kept[:skipped], round(kept[skipped - 1].end * FRAMES_PER_SECOND)
        else:
            advance = _resume_early_end(tokens, begin, size, advance)
            if content - seek > N_FRAMES_30S:  # more audio follows this window
                kept, advance = _hold_back_edge(kept, levels, size, advance)
        text = [t for s in kept for t in s.tokens]
        if want_words and text:
            with stage("alignment"):
                # advance can pass the window's audio (a timestamp stamped past its end): words stay inside it
                out.words += _words(decoder, cross, text, language, min(advance, size), start / SAMPLE_RATE)
        out.tokens += text
        seek += advance if advance > 0 else size  # never the same window twice
    return out


def _resume_early_end(tokens: list[int], begin: int, frames: int, advance: int) -> int:
    """Where the next window starts when this one's text closed well before its end.

    openai's rule consumes the whole window when the decode ends on a closed
    segment. But after a long sentence and a pause the model often ends the
    window there, with more speech after it: on the corpus's jfk followed by
    commands it ended at 11 s of 30 and 19 s of commands were never heard.
    So the next window starts at that segment's end instead; if what follows
    is silence, that window's decode says so and is skipped."""
    if advance != frames or not tokens or tokens[-1] < begin:
        return advance
    end = (tokens[-1] - begin) * 2  # timestamp units (20 ms) to mel frames (10 ms)
    return end if 0 < end and frames - end > RESUME_AFTER_FRAMES else advance


def _skipped_speech(kept: list, levels: _Levels) -> Optional[int]:
    """The index of the first segment after a pause the model placed over speech, if any.

    After a long sentence Whisper sometimes jumps over the next one: on jfk
    followed by "add apples to my shopping list", the window's timestamps went
    from 10.4 s straight to 15.6 s and the command was never heard. A pause
    of over RESUME_AFTER_FRAMES between two segments whose audio is loud
    (``_Levels.loud_s``) is such a jump; the window's text is cut before it and the
    next window starts at the end of the segment before, so the jumped
    sentence opens a window. A quiet pause costs nothing."""
    for i in range(1, len(kept)):
        start, end = kept[i - 1].end, kept[i].start
        if (end - start) * FRAMES_PER_SECOND > RESUME_AFTER_FRAMES and levels.loud_s(start, end) >= _SPEECH_S:
            return i
    return None


@dataclass
class _Levels:
    """How loud each 20 ms of one window is (computed once per window)."""

    rms: np.ndarray
    loud: float  # the window's loud level: its 95th percentile

    @classmethod
    def of(cls, chunk: np.ndarray) -> "_Levels":
        frame = SAMPLE_RATE // _LEVELS_PER_S
        n = chunk.shape[0] // frame
        if n == 0:
            return cls(np.zeros(0), 0.0)
        rms = np.sqrt(np.mean(chunk[:n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
        return cls(rms, float(np.percentile(rms, 95)))

    def loud_s(self, start_s: float, end_s: float, margin_s: float = _MARGIN_S) -> float:
        """Seconds between ``start_s`` and ``end_s`` (less a margin for the timestamps' error)
        at speech level: within _LOUD_DB of the window's loud frames."""
        a = max(0, int((start_s + margin_s) * _LEVELS_PER_S))
        b = min(self.rms.shape[0], int((end_s - margin_s) * _LEVELS_PER_S))
        floor = self.loud * 10 ** (-_LOUD_DB / 20)
        return float(np.count_nonzero(self.rms[a:b] > floor)) / _LEVELS_PER_S if b > a else 0.0

    def quietest_before(self, at_s: float) -> float:
        """The quietest moment (_QUIET_SPAN_S of it) in the _SNAP_BACK_S before ``at_s``, when
        it is a pause (under _LOUD_DB of the window's loud frames); else ``at_s``."""
        span = int(_QUIET_SPAN_S * _LEVELS_PER_S)
        b = min(self.rms.shape[0], int(at_s * _LEVELS_PER_S))
        a = max(0, b - int(_SNAP_BACK_S * _LEVELS_PER_S))
        if b - a < span:
            return at_s
        smooth = np.convolve(self.rms[a:b], np.ones(span) / span, mode="valid")
        i = smooth.shape[0] - 1 - int(np.argmin(smooth[::-1]))  # of equals, the latest: the least heard twice
        if smooth[i] > self.loud * 10 ** (-_LOUD_DB / 20):
            return at_s
        return (a + i + span // 2) / _LEVELS_PER_S


def _hold_back_edge(kept: list, levels: _Levels, frames: int, advance: int) -> tuple[list, int]:
    """Leaves a last segment that ends at the window's edge to the next window.

    A sentence cut by the window's end can be swallowed by the segment before
    it: the model stretches that segment's end timestamp over the cut words
    and the next window starts after them. On the corpus's 117 s utterance,
    "add apples to my shopping list" was closed at 29.6 s of 30 while "cancel
    timer" began before that, and "cancel timer" was never heard. So a last
    segment ending within HOLD_BACK_FRAMES of the edge is dropped and the next
    window starts where it started, hearing it and what follows it whole.
    Timestamps this late in a window run late (by 1.4 s there, with one
    thread), so the start is moved back to the pause just before it. A segment
    that starts the window is kept, so every window moves forward."""
    if len(kept) < 2 or advance <= 0:
        return kept, advance
    last = kept[-1]
    start = round(levels.quietest_before(last.start) * FRAMES_PER_SECOND)
    if frames - round(last.end * FRAMES_PER_SECOND) > HOLD_BACK_FRAMES or start <= 0:
        return kept, advance
    return kept[:-1], start


def _window_options(options: DecodeOptions, out: Windowed, condition: bool, frames: int) -> DecodeOptions:
    prompt = list(options.prompt_tokens) + (out.tokens if condition else [])
    beam, other = options.beam_size, options.beam_size_other
    if out.language is not None and other is not None:  # the first window settled the language
        beam, other = (beam if out.language == "en" else other), None
    return dataclasses.replace(options, language=out.language, prompt_tokens=prompt, timestamps=True,
                               record_alignment=False, beam_size=beam, beam_size_other=other,
                               max_tokens=max_tokens_for(frames / FRAMES_PER_SECOND))


def _words(decoder, cross, text: list[int], language: Optional[str], frames: int, offset: float) -> list[Word]:
    """Word timestamps of a window's kept text: one teacher-forced pass without timestamp tokens."""
    tok = decoder.tok
    forced = DecodeResult(tokens=text, language=language, avg_logprob=0.0, no_speech_prob=0.0,
                          prefix=tok.sot_sequence(language))
    weights = decoder.alignment_pass(cross, forced)
    words = align.word_timestamps(weights, text, tok, max(1, frames // 2), language)
    return [Word(word=w.word, start=round(w.start + offset, 3), end=round(w.end + offset, 3)) for w in words]

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
Two changes from openai's loop: a window whose text closes well before its
end is resumed there (``_resume_early_end``), and windows with audio after
them are kept per utterance (``Job.windows``) so that its partials,
speculations and final decode each of them once.
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
        # The last window is short: past its audio the encoder saw only the cached silence, and
        # a segment the model places there is invented (it repeated earlier commands at the end).
        kept = [s for s in kept if s.start < size / FRAMES_PER_SECOND]
        advance = _resume_early_end(tokens, begin, size, advance)
        text = [t for s in kept for t in s.tokens]
        if want_words and text:
            with stage("alignment"):
                out.words += _words(decoder, cross, text, language, advance, start / SAMPLE_RATE)
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

"""What a client asks for, as one value: :class:`Request`, and :class:`Job` (a request with its audio).

The server builds a ``Request`` from a Wyoming ``transcribe`` event with
:func:`parse_transcribe`, which checks every field once (types, the model
name against the loaded models, the language against that model's); the
``transcribe`` command and the benchmarks build one directly. A ``Job`` is the
one shape that reaches the scheduler and the engine, alone or in a batch.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from .audio import check_format
from .biasing import clean_names

# The program name Home Assistant may send as the transcribe event's model name.
PROGRAM_NAME = "amanuensis"

# Home Assistant's own end-of-command silence per vad_sensitivity (its VoiceCommandSegmenter):
# with --vad-endpointing the server ends a command after the same silence Home Assistant would wait.
ENDPOINT_SILENCE_S = {"default": 0.7, "relaxed": 1.25, "aggressive": 0.25}

# With --names-prompt: Whisper keeps the last ~223 prompt tokens, so keep it short.
MAX_PROMPT_CHARS = 600


class BadRequest(ValueError):
    """A field with the wrong type or value; ``code`` is the Wyoming error code."""

    def __init__(self, message: str, code: str = "bad-request"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    """What to do with one utterance. ``None`` fields take the server's configured defaults."""

    model: Optional[str] = None  # a loaded model's name; None = the default model
    language: Optional[str] = None  # None = the configured language, else auto-detect
    # Names and terms to bias toward (biasing.py): the request's transcript_names and
    # transcript_terms, then the names read from Home Assistant; cleaned, bounded, unique.
    names: tuple[str, ...] = ()
    beam_size: Optional[int] = None
    word_timestamps: Optional[bool] = None
    streaming: bool = False  # the client asked for transcript-chunk events
    partial: bool = False  # a streaming preview: greedy, no alignment
    vad_sensitivity: str = "default"  # how soon the client wants the end of a command found


@dataclass
class Job:
    """A request with its audio: what the scheduler queues and the engine runs.

    ``audio`` is 16 kHz mono float32 (from :mod:`audio`); ``audio_ms`` is what
    converting it cost; ``submitted`` starts the request's queue time.
    """

    audio: np.ndarray
    request: Request = field(default_factory=Request)
    audio_ms: float = 0.0
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    submitted: float = field(default_factory=time.perf_counter)
    run_ms: float = 0.0  # wall time of the engine run that carried it (set by the scheduler)
    # Set from the event loop when nobody wants the result any more (a withdrawn speculation,
    # a caller that left): the engine stops at its next stage or token instead of finishing.
    withdrawn: bool = False
    # Long audio: the utterance's decoded windows (windows.py), shared by all its jobs (partials,
    # speculations, the final) so that a window heard whole is decoded once; None = not kept.
    windows: Optional[dict] = None


# ---------------------------------------------------------------------------
# Wyoming event fields

def _str(data: Mapping[str, Any], key: str) -> Optional[str]:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _str_list(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"'{key}' must be a list of strings")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer, got {value!r}")
    return value


def audio_format(data: Mapping[str, Any]) -> tuple[int, int, int]:
    """(rate, width, channels) of an audio-start or audio-chunk event; BadRequest or AudioFormatError."""
    fmt = (_int(data, "rate"), _int(data, "width"), _int(data, "channels"))
    check_format(*fmt)
    return fmt


def build_prompt(names: tuple[str, ...]) -> Optional[str]:
    """Names as a Whisper prompt (``--names-prompt``). Whisper attends most to the
    tokens nearest the speech, so the first names (the request's own, the most
    specific) go last; names that do not fit in MAX_PROMPT_CHARS are left out."""
    kept: list[str] = []
    size = 0
    for name in names:
        if size + len(name) + 2 > MAX_PROMPT_CHARS:
            break
        kept.append(name)
        size += len(name) + 2
    return ", ".join(reversed(kept)) or None


def normalise_language(language: Optional[str], known: list[str]) -> Optional[str]:
    """'en-US' -> 'en' when the model knows 'en' but not 'en-US'; empty -> None (detect)."""
    if not language or not language.strip():
        return None
    language = language.strip()
    if language in known:
        return language
    base = language.replace("_", "-").split("-")[0].lower()
    return base if base in known else language


def wants_streaming(data: Mapping[str, Any]) -> bool:
    """Streaming is opt-in: ``"streaming": true`` in the event's data or in its ``context``."""
    if data.get("streaming") is True:
        return True
    context = data.get("context")
    return isinstance(context, dict) and context.get("streaming") is True


def parse_transcribe(data: Mapping[str, Any], models: Mapping[str, list[str]], default_model: str, *,
                     streaming_offered: bool, home_names: tuple[str, ...] = ()) -> Request:
    """A ``transcribe`` event's data -> Request, or BadRequest (code bad-request or unknown-model).

    ``models``: each loaded model's languages. The program's own name (or no
    name) means the default model. ``home_names``: the names read from Home
    Assistant, after the request's own. Linear in the lists and bounded
    (``biasing.MAX_NAMES``): this runs on the event loop.
    """
    model = _str(data, "name")
    language = _str(data, "language")
    names = _str_list(data, "transcript_names")
    terms = _str_list(data, "transcript_terms")
    if data.get("context") is not None and not isinstance(data.get("context"), dict):
        raise BadRequest("'context' must be an object")
    sensitivity = _str(data, "vad_sensitivity") or "default"
    if sensitivity not in ENDPOINT_SILENCE_S:
        raise BadRequest(f"'vad_sensitivity' must be one of {', '.join(ENDPOINT_SILENCE_S)}, got {sensitivity!r}")
    if model in (None, "", PROGRAM_NAME):
        model = None
    elif model not in models:
        raise BadRequest(f"model {model!r} is not loaded (loaded: {', '.join(models)})", code="unknown-model")
    return Request(
        model=model,
        language=normalise_language(language, models[model or default_model]),
        names=clean_names([*names, *terms, *home_names]),
        streaming=wants_streaming(data) and streaming_offered,
        vad_sensitivity=sensitivity,
    )

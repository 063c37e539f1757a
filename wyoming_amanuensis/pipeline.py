"""The transcription pipeline: audio -> log-mel -> encoder -> decoder -> (alignment).

``Engine`` loads every configured model once, picks the encoder backend,
caches the silence encoding that short commands are spliced onto, and runs
the stages in order, timing each into a ``Result``. It knows tensors, not
the Wyoming protocol; the server, the ``transcribe`` command and the
benchmarks all drive it the same way.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from . import align
from .audio import SAMPLE_RATE, AudioFormatError, pcm_to_16k, to_mono_16k
from .config import Settings
from .decoder import DecodeOptions, DecodeResult, WhisperDecoder, max_tokens_for
from .encoders import EncoderBackend, EncoderOutput, select_backend
from .mel import FRAMES_PER_SECOND, N_FRAMES_30S, log_mel
from .model.loader import WhisperModel, load_model
from .model.whisper import SilenceContext
from .result import Result, Timings

_LOG = logging.getLogger(__name__)

# Peak below this (about -80 dBFS) is digital silence: nothing to transcribe.
SILENCE_PEAK = 1e-4


class TranscriptionError(Exception):
    """A request the engine refuses; ``code`` is what the server sends back."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Request:
    model: Optional[str] = None  # a loaded model's name; None = the default model
    language: Optional[str] = None  # None = the configured language, else auto-detect
    prompt: Optional[str] = None  # words to bias toward (names, terms)
    word_timestamps: Optional[bool] = None  # None = the configured default
    beam_size: Optional[int] = None
    partial: bool = False  # a streaming partial: greedy, no alignment


@dataclass
class LoadedModel:
    model: WhisperModel
    backend: EncoderBackend
    decoder: WhisperDecoder
    silence: torch.Tensor  # encoder output of 30 s of silence, [1, 1500, d]
    context: Optional[SilenceContext]  # pooled silence keys the short window's encoder attends to


@contextmanager
def _stage(timings: Timings, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        setattr(timings, name + "_ms", getattr(timings, name + "_ms") + (time.perf_counter() - t0) * 1000.0)


class Engine:
    def __init__(self, settings: Settings, models: dict[str, LoadedModel]):
        self.settings = settings
        self.models = models
        self.default_model = next(iter(models))
        # torch already spreads one request over every core; a second concurrent
        # request would only thrash the caches, so requests run one at a time.
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- set-up
    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        torch.set_num_threads(settings.threads or os.cpu_count() or 1)
        models: dict[str, LoadedModel] = {}
        for name in settings.model_names():
            t0 = time.perf_counter()
            loaded = cls._load_one(name, settings)
            models[loaded.model.name] = loaded
            _LOG.info("model %s ready on %s in %.1f s", loaded.model.name, loaded.backend.name, time.perf_counter() - t0)
        return cls(settings, models)

    @staticmethod
    def _load_one(name: str, settings: Settings) -> LoadedModel:
        model = load_model(name)
        backend = select_backend(model.encoder, settings)
        silent_mel = log_mel(np.zeros(0, dtype=np.float32), model.dims.n_mels, n_frames=N_FRAMES_30S)
        silence, context = backend.silence(silent_mel[None], settings.silence_chunk or 1)
        decoder = WhisperDecoder(model, silence.to(backend.decoder_device), device=backend.decoder_device,
                                 int8=settings.int8_decoder and backend.decoder_device.type == "cpu",
                                 tail_chunk=settings.decoder_tail_chunk)
        return LoadedModel(model=model, backend=backend, decoder=decoder, silence=silence,
                           context=context if settings.silence_chunk else None)

    def close(self) -> None:
        for m in self.models.values():
            m.backend.close()

    @property
    def encoder_backend(self) -> str:
        return self.models[self.default_model].backend.name

    def model_languages(self) -> dict[str, list[str]]:
        return {name: m.model.languages for name, m in self.models.items()}

    def resolve_model(self, name: Optional[str]) -> LoadedModel:
        if not name:
            return self.models[self.default_model]
        if name in self.models:
            return self.models[name]
        raise TranscriptionError("unknown-model", f"model {name!r} is not loaded (loaded: {', '.join(self.models)})")

    # ------------------------------------------------------------- requests
    def transcribe_pcm(self, pcm: bytes, rate: int, width: int, channels: int, request: Request = Request()) -> Result:
        """Raw interleaved PCM in any format -> Result (the audio stage is timed)."""
        timings = Timings()
        t0 = time.perf_counter()
        with _stage(timings, "audio"):
            try:
                audio = pcm_to_16k(pcm, rate, width, channels)
            except AudioFormatError as err:
                raise TranscriptionError("unsupported-audio", str(err)) from None
        return self._run(audio, request, timings, t0)

    def transcribe_array(self, samples: np.ndarray, rate: int, request: Request = Request()) -> Result:
        """Float samples ([frames] or [frames, channels]) at any rate -> Result."""
        timings = Timings()
        t0 = time.perf_counter()
        with _stage(timings, "audio"):
            try:
                audio = to_mono_16k(samples, rate)
            except AudioFormatError as err:
                raise TranscriptionError("unsupported-audio", str(err)) from None
        return self._run(audio, request, timings, t0)

    def _run(self, audio: np.ndarray, request: Request, timings: Timings, t0: float) -> Result:
        loaded = self.resolve_model(request.model)
        seconds = audio.shape[0] / SAMPLE_RATE
        if seconds > self.settings.max_utterance_s:
            raise TranscriptionError("audio-too-long",
                                     f"utterance of {seconds:.1f} s exceeds the maximum of {self.settings.max_utterance_s:g} s")
        language = request.language or self.settings.language
        with self._lock:
            result = self._stages(loaded, audio, request, language, timings)
        timings.total_ms = (time.perf_counter() - t0) * 1000.0
        return result

    def _window_frames(self, n_samples: int) -> int:
        """Mel frames to encode: the speech plus a margin (fast path) or the whole 30 s window."""
        if not self.settings.fast_decoder:
            return N_FRAMES_30S
        seconds = n_samples / SAMPLE_RATE + self.settings.splice_margin_s
        frames = int(math.ceil(seconds * FRAMES_PER_SECOND))
        frames += frames % 2  # conv2 halves it: keep whole encoder positions
        return max(2, min(N_FRAMES_30S, frames))

    def _stages(self, loaded: LoadedModel, audio: np.ndarray, request: Request, language: Optional[str],
                timings: Timings) -> Result:
        model = loaded.model
        seconds = audio.shape[0] / SAMPLE_RATE
        want_words = (self.settings.word_timestamps if request.word_timestamps is None else request.word_timestamps)
        want_words = want_words and not request.partial

        def result(text: str, lang: Optional[str], dec: Optional[DecodeResult], enc: Optional[EncoderOutput],
                   words=None) -> Result:
            return Result(text=text, language=lang, timings=timings, audio_seconds=seconds,
                          tokens=len(dec.tokens) if dec else 0, encoder_backend=(enc.backend if enc else loaded.backend.name),
                          model=model.name, words=words if want_words else None,
                          encoder_fallback=bool(enc and enc.fallback), token_ids=list(dec.tokens) if dec else [])

        if audio.size == 0 or float(np.abs(audio).max()) < SILENCE_PEAK:
            return result("", language or (None if model.tokenizer.multilingual else "en"), None, None, words=[])

        with _stage(timings, "mel"):
            frames = self._window_frames(audio.shape[0])
            mel = log_mel(audio, model.dims.n_mels, n_frames=frames)[None]

        with _stage(timings, "encoder"):
            enc = loaded.backend.encode(mel, loaded.context)
            enc.tail_cached = frames < N_FRAMES_30S
            timings.npu_ms += enc.npu_ms

        beam = 1 if request.partial else (request.beam_size or self.settings.beam_size)
        fast_align = want_words and self.settings.fast_alignment and beam == 1
        with _stage(timings, "decoder"):
            cross = loaded.decoder.prepare(enc)
            prompt = model.tokenizer.encode(" " + request.prompt.strip()) if request.prompt and request.prompt.strip() else []
            dec = loaded.decoder.decode(cross, DecodeOptions(language=language, beam_size=beam, prompt_tokens=prompt,
                                                             max_tokens=max_tokens_for(seconds),
                                                             record_alignment=fast_align))
        if dec.is_silence:
            return result("", dec.language, dec, enc, words=[])
        text = model.tokenizer.decode(dec.tokens).strip()

        words = None
        if want_words:
            with _stage(timings, "alignment"):
                weights = dec.alignment_weights
                if weights is None or weights.shape[1] != len(dec.tokens) + 1:
                    weights = loaded.decoder.alignment_pass(cross, dec)
                positions = min(int(math.ceil(seconds * FRAMES_PER_SECOND / 2)), weights.shape[-1])
                words = align.word_timestamps(weights, dec.tokens, model.tokenizer, positions, dec.language)
        return result(text, dec.language, dec, enc, words=words)

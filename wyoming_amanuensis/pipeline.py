"""The transcription pipeline: audio -> log-mel -> encoder -> decoder -> (alignment).

``Engine`` loads every configured model once, picks the encoder backend,
caches the silence encoding that short commands are spliced onto, and runs
the stages in order, timing each into a ``Result``. It knows tensors, not
the Wyoming protocol; the server, the ``transcribe`` command and the
benchmarks all drive it the same way.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import numpy as np
import torch

from . import align
from .audio import SAMPLE_RATE, AudioFormatError, pcm_to_16k, to_mono_16k
from .config import Settings
from .decoding import CrossAttention, DecodeOptions, DecodeResult, Decoder, max_tokens_for
from .encoders import EncoderBackend, EncoderOutput, select_backend
from .mel import FRAMES_PER_SECOND, N_FRAMES_30S, log_mel
from .model.loader import WhisperModel, load_model
from .model.silence import SilenceContext
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
    decoder: Decoder
    context: Optional[SilenceContext]  # pooled silence keys the short window's encoder attends to


def _return_freed_memory() -> None:
    """Loading frees a few hundred MB of transient buffers (file bytes, float copies of
    quantised weights) that glibc keeps in its arenas; hand them back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


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
        _return_freed_memory()
        return cls(settings, models)

    @staticmethod
    def _load_one(name: str, settings: Settings) -> LoadedModel:
        model = load_model(name)
        backend = select_backend(model.encoder, settings)
        silent_mel = log_mel(np.zeros(0, dtype=np.float32), model.dims.n_mels, n_frames=N_FRAMES_30S)
        silence, context = backend.silence(silent_mel[None], settings.silence_chunk or 1)
        decoder = Decoder(model, silence.to(backend.decoder_device), device=backend.decoder_device,
                          int8=settings.int8_decoder and backend.decoder_device.type == "cpu",
                          tail_chunk=settings.decoder_tail_chunk)
        return LoadedModel(model=model, backend=backend, decoder=decoder,
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
        job = self._job(lambda: pcm_to_16k(pcm, rate, width, channels), request)
        with self._lock:
            self._front(job)
            if job.result is None:
                self._decode([job])
        return self._finish(job)

    def transcribe_array(self, samples: np.ndarray, rate: int, request: Request = Request()) -> Result:
        """Float samples ([frames] or [frames, channels]) at any rate -> Result."""
        job = self._job(lambda: to_mono_16k(samples, rate), request)
        with self._lock:
            self._front(job)
            if job.result is None:
                self._decode([job])
        return self._finish(job)

    def transcribe_pcm_batch(self, items: list[PcmInput]) -> list[Union[Result, TranscriptionError]]:
        """Several requests at once (``--batch-decoding``): each is converted, checked and
        encoded on its own; greedy requests of one model then share one batched decode,
        whose wall time each of them reports as its decoder time. A bad request fails
        alone, with its TranscriptionError in its place in the returned list."""
        jobs: list[Union[_Job, TranscriptionError]] = []
        for item in items:
            try:
                jobs.append(self._job(lambda it=item: pcm_to_16k(it.pcm, it.rate, it.width, it.channels), item.request))
            except TranscriptionError as err:
                jobs.append(err)
        live = [j for j in jobs if isinstance(j, _Job)]
        with self._lock:
            for job in live:
                self._front(job)
            pending = [j for j in live if j.result is None]
            for name in {j.loaded.model.name for j in pending}:
                group = [j for j in pending if j.loaded.model.name == name]
                greedy = [j for j in group if j.options.beam_size == 1]
                for j in group:
                    if j.options.beam_size > 1:
                        self._decode([j])
                for k in range(0, len(greedy), self.settings.batch_decode_size):
                    self._decode(greedy[k:k + self.settings.batch_decode_size])
        return [self._finish(j) if isinstance(j, _Job) else j for j in jobs]

    # --------------------------------------------------------------- stages
    def _job(self, convert, request: Request) -> "_Job":
        """Audio stage and request checks (outside the engine lock: no model involved)."""
        timings = Timings()
        t0 = time.perf_counter()
        with _stage(timings, "audio"):
            try:
                audio = convert()
            except AudioFormatError as err:
                raise TranscriptionError("unsupported-audio", str(err)) from None
        loaded = self.resolve_model(request.model)
        seconds = audio.shape[0] / SAMPLE_RATE
        if seconds > self.settings.max_utterance_s:
            raise TranscriptionError("audio-too-long",
                                     f"utterance of {seconds:.1f} s exceeds the maximum of {self.settings.max_utterance_s:g} s")
        want_words = self.settings.word_timestamps if request.word_timestamps is None else request.word_timestamps
        want_words = bool(want_words) and not request.partial
        beam = 1 if request.partial else (request.beam_size or self.settings.beam_size)
        tokenizer = loaded.model.tokenizer
        prompt = tokenizer.encode(" " + request.prompt.strip()) if request.prompt and request.prompt.strip() else []
        options = DecodeOptions(language=request.language or self.settings.language, beam_size=beam,
                                prompt_tokens=prompt, max_tokens=max_tokens_for(seconds),
                                record_alignment=want_words and self.settings.fast_alignment and beam == 1)
        return _Job(loaded=loaded, audio=audio, seconds=seconds, options=options, want_words=want_words,
                    timings=timings, t0=t0)

    def _window_frames(self, n_samples: int) -> int:
        """Mel frames to encode: the speech plus a margin (fast path) or the whole 30 s window."""
        if not self.settings.fast_decoder:
            return N_FRAMES_30S
        seconds = n_samples / SAMPLE_RATE + self.settings.splice_margin_s
        frames = int(math.ceil(seconds * FRAMES_PER_SECOND))
        frames += frames % 2  # conv2 halves it: keep whole encoder positions
        return max(2, min(N_FRAMES_30S, frames))

    def _front(self, job: "_Job") -> None:
        """mel and encoder stages, then the decoder's per-request preparation (timed as decoder)."""
        model, audio, timings = job.loaded.model, job.audio, job.timings
        if audio.size == 0 or float(np.abs(audio).max()) < SILENCE_PEAK:
            language = job.options.language or (None if model.tokenizer.multilingual else "en")
            job.result = self._result(job, "", language, words=[])
            return
        with _stage(timings, "mel"):
            frames = self._window_frames(audio.shape[0])
            mel = log_mel(audio, model.dims.n_mels, n_frames=frames)[None]
        with _stage(timings, "encoder"):
            job.enc = job.loaded.backend.encode(mel, job.loaded.context)
            job.enc.tail_cached = frames < N_FRAMES_30S
            timings.npu_ms += job.enc.npu_ms
        with _stage(timings, "decoder"):
            job.cross = job.loaded.decoder.prepare(job.enc)

    def _decode(self, jobs: list["_Job"]) -> None:
        decoder = jobs[0].loaded.decoder
        t0 = time.perf_counter()
        if len(jobs) == 1:
            decoded = [decoder.decode(jobs[0].cross, jobs[0].options)]
        else:
            decoded = decoder.decode_batch([j.cross for j in jobs], [j.options for j in jobs])
        elapsed = (time.perf_counter() - t0) * 1000.0
        for job, dec in zip(jobs, decoded):
            job.dec = dec
            job.timings.decoder_ms += elapsed

    def _finish(self, job: "_Job") -> Result:
        """Silence verdict, text, optional alignment stage; stamps the total time."""
        if job.result is None:
            dec, model = job.dec, job.loaded.model
            if dec.is_silence:
                job.result = self._result(job, "", dec.language, words=[])
            else:
                words = None
                if job.want_words:
                    with _stage(job.timings, "alignment"):
                        weights = dec.alignment_weights
                        if weights is None or weights.shape[1] != len(dec.tokens) + 1:
                            weights = job.loaded.decoder.alignment_pass(job.cross, dec)
                        positions = min(int(math.ceil(job.seconds * FRAMES_PER_SECOND / 2)), weights.shape[-1])
                        words = align.word_timestamps(weights, dec.tokens, model.tokenizer, positions, dec.language)
                job.result = self._result(job, model.tokenizer.decode(dec.tokens).strip(), dec.language, words=words)
        job.timings.total_ms = (time.perf_counter() - job.t0) * 1000.0
        return job.result

    @staticmethod
    def _result(job: "_Job", text: str, language: Optional[str], words) -> Result:
        dec, enc = job.dec, job.enc
        return Result(text=text, language=language, timings=job.timings, audio_seconds=job.seconds,
                      tokens=len(dec.tokens) if dec else 0,
                      encoder_backend=enc.backend if enc else job.loaded.backend.name,
                      model=job.loaded.model.name, words=words if job.want_words else None,
                      encoder_fallback=bool(enc and enc.fallback), token_ids=list(dec.tokens) if dec else [])


@dataclass
class PcmInput:
    pcm: bytes
    rate: int
    width: int
    channels: int
    request: Request = field(default_factory=Request)


@dataclass
class _Job:
    """One request on its way through the stages."""

    loaded: LoadedModel
    audio: np.ndarray
    seconds: float
    options: DecodeOptions
    want_words: bool
    timings: Timings
    t0: float
    enc: Optional[EncoderOutput] = None
    cross: Optional[CrossAttention] = None
    dec: Optional[DecodeResult] = None
    result: Optional[Result] = None

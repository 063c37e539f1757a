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
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import numpy as np

from .audio import SAMPLE_RATE, AudioFormatError, to_16k
from .biasing import choose, name_boost, readings
from .config import Settings
from .cost import CostMeter, EnergyStatus
from .model.loader import WhisperModel
from .request import Job, Request, build_prompt
from .result import Result, Timings

if TYPE_CHECKING:
    from .decoder_net import CrossAttention
    from .decoding import DecodeResult
    from .encoders.base import EncoderBackend, EncoderOutput

_LOG = logging.getLogger(__name__)

_ENGINE_MODULES = threading.Lock()
_engine_modules_imported = False


def import_engine_modules() -> None:
    """The engine's modules (the search, mel, alignment, long audio; numpy, scipy), imported
    by the first Engine rather than with this module: the server imports this module, opens
    its port and answers describe while they load in the background (lifetime.py). Every
    name the engine uses from them is bound here, once. torch is not among them: only the
    torch runtime imports it (``model/torch_runtime.py``), and a test
    (test_startup_imports) checks that the CPU server never does."""
    global _engine_modules_imported, align, DecodeOptions, Decoder, max_tokens_for, \
        FRAMES_PER_SECOND, N_FRAMES_30S, log_mel, decode_windows, is_long, runtime_for, threadpool_limits
    with _ENGINE_MODULES:
        if _engine_modules_imported:
            return
        from . import align
        from .decoding import DecodeOptions, Decoder, max_tokens_for
        from .mel import FRAMES_PER_SECOND, N_FRAMES_30S, log_mel
        from .runtime_choice import runtime_for
        from .windows import decode_windows, is_long
        from threadpoolctl import threadpool_limits
        _engine_modules_imported = True

# Peak below this (about -80 dBFS) is digital silence: nothing to transcribe.
SILENCE_PEAK = 1e-4


class TranscriptionError(Exception):
    """A request the engine refuses; ``code`` is what the server sends back."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class LoadedModel:
    model: WhisperModel
    backend: EncoderBackend
    decoder: Decoder
    context: Any  # the backend's pooled silence keys the short window's encoder attends to, or None
    runtime: str = "torch"  # "onnx" or "torch" (runtime_choice.py)


def return_freed_memory() -> None:
    """Loading frees a few hundred MB of transient buffers (file bytes, float copies of
    quantised weights) that glibc keeps in its arenas; hand them back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@contextmanager
def _stage(timings: Timings, name: str, meter: CostMeter) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        with meter.charge([timings]):
            yield
    finally:
        setattr(timings, name + "_ms", getattr(timings, name + "_ms") + (time.perf_counter() - t0) * 1000.0)


class Engine:
    def __init__(self, settings: Settings, models: dict[str, LoadedModel], meter: Optional[CostMeter] = None):
        import_engine_modules()
        self.settings = settings
        self.models = models
        # Charges each stage's CPU time and energy to its request (cost.py).
        self.meter = meter if meter is not None else CostMeter()
        self.default_model = next(iter(models))
        self.threads = settings.cpu_threads()
        # torch's thread count is per calling thread: set by run() on a scheduler worker
        self._torch = sys.modules["torch"] if any(m.runtime == "torch" for m in models.values()) else None
        # Safe to run from several threads at once (the scheduler's --workers): the weights
        # are read-only and every request's caches are its own; the NPU backend serialises
        # its device itself.

    # ---------------------------------------------------------------- set-up
    @classmethod
    def load(cls, settings: Settings, meter: Optional[CostMeter] = None) -> "Engine":
        """``meter``: the cost meter to charge requests to (one per process: it logs what it can
        measure once, and outlives an idle unload); a new one when not given."""
        t0 = time.perf_counter()
        if not _engine_modules_imported:
            import_engine_modules()
            _LOG.info("the engine's modules imported in %.0f ms", (time.perf_counter() - t0) * 1000)
        # numpy's BLAS (OpenBLAS) serves one small product per request, the log-mel's filterbank,
        # and its threads spin after each call: on 2 cores that burnt ~100 ms of CPU per command
        # and slowed the runtime's own threads (benchmarks/RESULTS.md, session 8). One thread.
        threadpool_limits(1, user_api="blas")
        models: dict[str, LoadedModel] = {}
        for name in settings.model_names():
            t0 = time.perf_counter()
            loaded = cls._load_one(name, settings)
            models[loaded.model.name] = loaded
            _LOG.info("model %s ready on %s in %.1f s", loaded.model.name, loaded.backend.name, time.perf_counter() - t0)
        return_freed_memory()
        return cls(settings, models, meter)

    @staticmethod
    def _load_one(name: str, settings: Settings) -> LoadedModel:
        runtime = runtime_for(settings)
        if runtime == "onnx":
            from .onnx_runtime.load import load_onnx
            loaded = load_onnx(name, cache_dir=settings.silence_cache_dir(), threads=settings.cpu_threads(),
                               int8_decoder=settings.int8_decoder, silence_chunk=settings.silence_chunk,
                               tail_chunk=settings.decoder_tail_chunk)
            model, backend, net, context = loaded.model, loaded.backend, loaded.net, loaded.context
        else:
            from .model.torch_runtime import load_torch
            model, backend, net, context = load_torch(name, settings)
        decoder = Decoder(model, net, beam_like_ctranslate2=settings.beam_like_ctranslate2)
        return LoadedModel(model=model, backend=backend, decoder=decoder,
                           context=context if settings.silence_chunk else None, runtime=runtime)

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

    def backend_stats(self) -> Optional[dict]:
        """The default model's encoder backend counters (the NPU's; None for torch)."""
        return self.models[self.default_model].backend.stats()

    def energy_status(self) -> EnergyStatus:
        """Whether requests carry joules, from which counters, or why not."""
        return self.meter.status

    # ------------------------------------------------------------- requests
    def transcribe(self, samples: np.ndarray, rate: int, request: Request = Request()) -> Result:
        """A whole recording (float samples, [frames] or [frames, channels], any rate) -> Result."""
        try:
            audio, audio_ms = to_16k(samples, rate)
        except AudioFormatError as err:
            raise TranscriptionError("unsupported-audio", str(err)) from None
        outcome = self.run([Job(audio=audio, request=request, audio_ms=audio_ms)])[0]
        if isinstance(outcome, TranscriptionError):
            raise outcome
        return outcome

    def ready(self) -> None:
        """Loaded already (EngineHost.ready waits for a load)."""

    def run(self, jobs: list[Job]) -> list[Union[Result, TranscriptionError]]:
        """Jobs -> a Result or the TranscriptionError it failed with, in order.

        Each job is checked and encoded on its own; with several jobs (the
        scheduler's batches, ``--batch-decoding``), greedy jobs of one model then
        share one batched decode, whose wall time each of them reports as its
        decoder time. A bad job fails alone."""
        start = time.perf_counter()
        if self._torch is not None and self._torch.get_num_threads() != self.threads:
            self._torch.set_num_threads(self.threads)
        work: list[Union[_Work, TranscriptionError]] = []
        for job in jobs:
            try:
                work.append(self._check(job, start))
            except TranscriptionError as err:
                work.append(err)
        live = [w for w in work if isinstance(w, _Work)]
        for w in live:
            if not w.job.withdrawn:
                (self._long if is_long(w.audio.shape[0]) else self._front)(w)
        pending = [w for w in live if w.result is None and not w.job.withdrawn]
        for name in {w.loaded.model.name for w in pending}:
            group = [w for w in pending if w.loaded.model.name == name]
            # a batch is greedy throughout; a request whose width waits on its language goes alone
            greedy, alone = [], []
            for w in group:
                batchable = w.options.beam_size == 1 and w.options.beam_size_other is None
                (greedy if batchable else alone).append(w)
            for w in alone:
                self._decode([w])
            for k in range(0, len(greedy), self.settings.batch_decode_size):
                self._decode(greedy[k:k + self.settings.batch_decode_size])
        return [w if isinstance(w, TranscriptionError)
                else TranscriptionError("withdrawn", "nobody wants this result any more") if w.job.withdrawn
                else self._finish(w) for w in work]

    # --------------------------------------------------------------- stages
    def _check(self, job: Job, start: float) -> "_Work":
        """Request checks and decoding options (no model work yet)."""
        request = job.request
        loaded = self.resolve_model(request.model)
        seconds = job.audio.shape[0] / SAMPLE_RATE
        if seconds > self.settings.max_utterance_s:
            raise TranscriptionError("audio-too-long",
                                     f"utterance of {seconds:.1f} s exceeds the maximum of {self.settings.max_utterance_s:g} s")
        want_words = self.settings.word_timestamps if request.word_timestamps is None else request.word_timestamps
        want_words = bool(want_words) and not request.partial
        beam, other = self._beam_widths(request, loaded.model.tokenizer.multilingual)
        tokenizer = loaded.model.tokenizer
        prompt_text = build_prompt(request.names) if self.settings.names_prompt else None
        prompt = tokenizer.encode(" " + prompt_text) if prompt_text else []
        boost = name_boost(tokenizer, request.names, self.settings.names_boost, loaded.model.dims.n_vocab)
        options = DecodeOptions(language=request.language or self.settings.language, beam_size=beam,
                                beam_size_other=other,
                                prompt_tokens=prompt, boost=boost, max_tokens=max_tokens_for(seconds),
                                record_alignment=want_words and self.settings.fast_alignment and beam == 1
                                and other is None,
                                stop=lambda: job.withdrawn)
        timings = Timings(audio_ms=job.audio_ms, queue_ms=max(0.0, (start - job.submitted) * 1000.0),
                          energy_j=self.meter.initial_energy())
        return _Work(job=job, loaded=loaded, audio=job.audio, seconds=seconds, options=options, want_words=want_words,
                     timings=timings, t0=start)

    def _beam_widths(self, request: Request, multilingual: bool) -> tuple[int, Optional[int]]:
        """(width, width for a language other than English or None when it is the same).
        English is decoded greedily and other languages with a beam by default
        (--beam-size-non-english, chosen by benchmarks/bench_accuracy.py); a request's own
        width, a partial (always greedy) or a known language settles it now."""
        if request.partial:
            return 1, None
        if request.beam_size:
            return request.beam_size, None
        beam, other = self.settings.beam_size, self.settings.beam_size_non_english
        language = request.language or self.settings.language
        if not multilingual or other == beam:
            return beam, None
        if language is not None:
            return (beam if language == "en" else other), None
        return beam, other

    def _window_frames(self, n_samples: int) -> int:
        """Mel frames to encode: the speech plus a margin (fast path) or the whole 30 s window."""
        if not self.settings.fast_decoder:
            return N_FRAMES_30S
        seconds = n_samples / SAMPLE_RATE + self.settings.splice_margin_s
        frames = int(math.ceil(seconds * FRAMES_PER_SECOND))
        frames += frames % 2  # conv2 halves it: keep whole encoder positions
        return max(2, min(N_FRAMES_30S, frames))

    def _front(self, w: "_Work") -> None:
        """mel and encoder stages, then the decoder's per-request preparation (timed as decoder)."""
        model, audio, timings = w.loaded.model, w.audio, w.timings
        if audio.size == 0 or float(np.abs(audio).max()) < SILENCE_PEAK:
            language = w.options.language or (None if model.tokenizer.multilingual else "en")
            w.result = self._result(w, "", language, words=[])
            return
        with _stage(timings, "mel", self.meter):
            frames = self._window_frames(audio.shape[0])
            mel = log_mel(audio, model.dims.n_mels, n_frames=frames)[None]
        with _stage(timings, "encoder", self.meter):
            w.enc = w.loaded.backend.encode(mel, w.loaded.context)
            w.enc.tail_cached = frames < N_FRAMES_30S
            timings.npu_ms += w.enc.npu_ms
        with _stage(timings, "decoder", self.meter):
            w.cross = w.loaded.decoder.prepare(w.enc)
        threshold = self.settings.language_full_window_below
        if w.options.language is None and model.tokenizer.multilingual and threshold > 0 and frames < N_FRAMES_30S:
            self._settle_language(w, threshold)

    def _settle_language(self, w: "_Work", threshold: float) -> None:
        """The language of a short command that names none, when the short window leaves it
        in doubt (--language-full-window-below): the spliced silence serves the words but
        detects fewer languages (corpus_ml: 70.9 % against 74.5 % on the full 30 s window), so a
        detection less sure than ``threshold`` is made again on the whole window, as
        faster-whisper detects, and the command is decoded in that language."""
        decoder, model = w.loaded.decoder, w.loaded.model
        with _stage(w.timings, "decoder", self.meter):
            _, probability = decoder.detect_language(w.cross)
        if probability >= threshold:
            return  # decoded as before, detecting the same language on the way
        with _stage(w.timings, "mel", self.meter):
            mel = log_mel(w.audio, model.dims.n_mels, n_frames=N_FRAMES_30S)[None]
        with _stage(w.timings, "encoder", self.meter):
            enc = w.loaded.backend.encode(mel, w.loaded.context)
            enc.tail_cached = False
            w.timings.npu_ms += enc.npu_ms
        with _stage(w.timings, "decoder", self.meter):
            language, _ = decoder.detect_language(decoder.prepare(enc))
        w.options = replace(w.options, language=language)

    def _long(self, w: "_Work") -> None:
        """All stages of an utterance longer than one window (windows.py), alone: its
        windows are decoded one after another, each prompted by the text before it."""
        tokenizer = w.loaded.model.tokenizer
        out = decode_windows(w.loaded, w.audio, w.options, frames_for=self._window_frames,
                             stage=lambda name: _stage(w.timings, name, self.meter),
                             condition=self.settings.condition_on_previous_text, want_words=w.want_words,
                             cache=w.job.windows)
        language = out.language or w.options.language or (None if tokenizer.multilingual else "en")
        w.result = Result(text=tokenizer.decode(out.tokens).strip(), language=language, timings=w.timings,
                          audio_seconds=w.seconds, tokens=len(out.tokens), encoder_backend=w.loaded.backend.name,
                          model=w.loaded.model.name, words=out.words if w.want_words else None,
                          token_ids=list(out.tokens))

    def _decode(self, works: list["_Work"]) -> None:
        decoder = works[0].loaded.decoder
        t0 = time.perf_counter()
        with self.meter.charge([w.timings for w in works]):  # a batch's cost, split evenly
            if len(works) == 1:
                decoded = [decoder.decode(works[0].cross, works[0].options)]
            else:
                decoded = decoder.decode_batch([j.cross for j in works], [j.options for j in works])
        elapsed = (time.perf_counter() - t0) * 1000.0
        for w, dec in zip(works, decoded):
            w.dec = dec
            w.timings.decoder_ms += elapsed

    def _finish(self, w: "_Work") -> Result:
        """Silence verdict, text, optional alignment stage; stamps the total time (the audio
        stage, done as the audio arrived, plus the wall time from the start of the run)."""
        if w.result is None:
            dec, model = w.dec, w.loaded.model
            if dec.is_silence:
                w.result = self._result(w, "", dec.language, words=[])
            else:
                words = None
                if w.want_words:
                    with _stage(w.timings, "alignment", self.meter):
                        weights = dec.alignment_weights
                        if weights is None or weights.shape[1] != len(dec.tokens) + 1:
                            weights = w.loaded.decoder.alignment_pass(w.cross, dec)
                        positions = min(int(math.ceil(w.seconds * FRAMES_PER_SECOND / 2)), weights.shape[-1])
                        words = align.word_timestamps(weights, dec.tokens, model.tokenizer, positions, dec.language)
                text = model.tokenizer.decode(dec.tokens).strip()
                if w.job.request.names and self.settings.names_snap > 0 and not w.job.request.partial:
                    with _stage(w.timings, "names", self.meter):
                        text = self._snap_names(w, text)
                w.result = self._result(w, text, dec.language, words=words)
        w.timings.total_ms = w.timings.audio_ms + (time.perf_counter() - w.t0) * 1000.0
        return w.result

    def _snap_names(self, w: "_Work", text: str) -> str:
        """Names stage: the transcript with a run of words read as a known name
        (biasing.readings) when the model, teacher-forced over this audio, finds that
        reading nearly as likely as its own (--names-snap-margin)."""
        alternatives = readings(text, w.job.request.names, self.settings.names_snap, language=w.dec.language)
        if not alternatives:
            return text
        tok = w.loaded.model.tokenizer
        try:
            deltas = w.loaded.decoder.compare(w.cross, w.dec.prefix, tok.encode(" " + text),
                                              [tok.encode(" " + r.scored) for r in alternatives], decoded=w.dec)
        except ValueError:  # too long for the decoder's context: keep the words as decoded
            return text
        chosen = choose(alternatives, deltas, self.settings.names_snap_margin)
        return chosen.text if chosen else text

    @staticmethod
    def _result(w: "_Work", text: str, language: Optional[str], words) -> Result:
        dec, enc = w.dec, w.enc
        return Result(text=text, language=language, timings=w.timings, audio_seconds=w.seconds,
                      tokens=len(dec.tokens) if dec else 0,
                      encoder_backend=enc.backend if enc else w.loaded.backend.name,
                      model=w.loaded.model.name, words=words if w.want_words else None,
                      encoder_fallback=bool(enc and enc.fallback), token_ids=list(dec.tokens) if dec else [])


@dataclass
class _Work:
    """One request on its way through the stages."""

    job: Job
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

"""One utterance being received on a connection: its request, its 16 kHz audio so far, its voice activity.

Audio is converted as each chunk arrives (:class:`~wyoming_amanuensis.audio.Converter`),
so what is held is the 16 kHz float32 result, bounded by ``max_samples``,
whatever format the client sends. The VAD (:class:`~wyoming_amanuensis.vad.SpeechTracker`)
reads the same samples as they come; :meth:`Utterance.window` is the part worth
transcribing (up to a margin after the last speech), which is what partial, speculative and
final :class:`~wyoming_amanuensis.request.Job` values built here carry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .audio import SAMPLE_RATE, Converter
from .config import Settings
from .request import Job, Request
from .scheduler import Scheduler
from .speculation import Speculator
from .streaming import Stabilizer
from .vad import SileroVad, SpeechTracker


@dataclass
class Utterance:
    """One utterance being received: its request, its 16 kHz audio so far, its streaming state."""

    request: Request
    max_samples: int
    chunks: list[np.ndarray] = field(default_factory=list)  # 16 kHz float32, as converted
    samples: int = 0
    converter: Converter = field(default_factory=Converter)
    tracker: Optional[SpeechTracker] = None  # the VAD, when the server runs one
    trim_after_s: Optional[float] = None  # keep this much after the last speech; None = keep everything
    speculator: Optional[Speculator] = None
    endpoint_s: Optional[float] = None  # silence that ends it here (server endpointing), else None
    min_speech_s: float = 0.0  # speech to hear before endpointing may end it
    refused: bool = False  # an error was sent; ignore the rest until the next utterance
    ended: Optional[str] = None  # why its final was started: "audio-stop", "vad" or "max-utterance"
    stopped_at: float = 0.0  # perf_counter() when it ended: the answer's latency counts from here
    ended_at: int = 0  # samples received when it ended
    stream_started: bool = False  # transcript-start sent
    stabilizer: Stabilizer = field(default_factory=Stabilizer)
    partial_task: Optional[asyncio.Task] = None
    partial_at: int = 0  # samples the last partial decode saw
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    windows: dict = field(default_factory=dict)  # long audio's decoded windows (Job.windows)

    def add(self, audio: np.ndarray) -> None:
        if audio.size:
            self.chunks.append(audio)
            self.samples += audio.size
            if self.tracker is not None:
                self.tracker.feed(audio)

    def drop_audio(self) -> None:
        self.chunks, self.samples = [], 0

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:  # keep one array: later calls copy only the new chunks
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, dtype=np.float32)

    # ------------------------------------------------------------ voice activity
    def window(self) -> tuple[int, int]:
        """Samples to transcribe: from the start to ``trim_after_s`` after the last speech;
        everything when not trimming or when the VAD found no speech (quiet speech the VAD
        misses is still words to Whisper: benchmarks/bench_trim.py). The start is kept because
        cutting it lost quiet first words and gained nothing measurable."""
        speech = self.tracker.speech if self.tracker is not None else None
        if self.trim_after_s is None or speech is None:
            return 0, self.samples
        return 0, min(self.samples, speech.end + int(self.trim_after_s * SAMPLE_RATE))

    def endpoint_reached(self) -> bool:
        """Server endpointing: at least ``min_speech_s`` of speech was heard, then ``endpoint_s`` of silence."""
        t = self.tracker
        return (self.endpoint_s is not None and t is not None and t.speech is not None
                and t.voiced >= self.min_speech_s * SAMPLE_RATE and not t.speaking and t.silence_s >= self.endpoint_s)

    def speculate(self) -> None:
        """After new audio: withdraw a speculation that speech has outrun; start one at a pause."""
        spec, t = self.speculator, self.tracker
        if spec is None or t is None or t.speech is None:
            return
        spec.resumed(t.runs)
        if spec.due(t.silence_s, t.speaking):
            window = self.window()
            spec.start(self._job(window, self.request), window, t.runs)

    # ---------------------------------------------------------------- jobs
    def _job(self, window: tuple[int, int], request: Request) -> Job:
        start, end = window
        return Job(audio=self.audio()[start:end], request=request, audio_ms=self.converter.ms,
                   request_id=self.request_id, windows=self.windows)

    def partial_job(self) -> Job:
        # All the audio so far, as before the VAD: partial previews were tuned on it (the
        # stabiliser commits words two previews agree on), a trimmed one changes which.
        return self._job((0, self.samples), dataclasses.replace(self.request, partial=True))

    def end(self, reason: str) -> None:
        self.ended, self.stopped_at, self.ended_at = reason, time.perf_counter(), self.samples

    def final_job(self) -> tuple[Job, tuple[int, int]]:
        """The utterance's job and window (the resampler flushed); the audio leaves the utterance."""
        self.add(self.converter.flush())
        start, end = self.window()
        window = (start, min(end, max(self.max_samples, start)))  # the flush must not push it past the limit
        job = self._job(window, self.request)
        self.drop_audio()
        return job, window

    def answer_data(self, final: Job, window: tuple[int, int], computed: bool) -> dict:
        """The transcript's extra fields about how the answer came: what ended the utterance,
        the audio received by then, where the VAD heard speech, the window read, ms from the end to the answer, and (with speculation) which
        speculation outcome and what it cost. ``computed``: the final ran (no speculation used)."""
        speech = self.tracker.speech if self.tracker is not None else None
        data: dict = {
            "endpoint": self.ended,
            "ended_at_s": round(self.ended_at / SAMPLE_RATE, 3),
            "speech_s": None if speech is None else [round(speech.start / SAMPLE_RATE, 3), round(speech.end / SAMPLE_RATE, 3)],
            "window_s": [round(window[0] / SAMPLE_RATE, 3), round(window[1] / SAMPLE_RATE, 3)],
            "answer_ms": round((time.perf_counter() - self.stopped_at) * 1000.0, 3),
        }
        spec = self.speculator
        if spec is not None:
            used = final if computed else spec.used
            data["speculation"] = {
                "outcome": spec.outcome,
                "runs": len(spec.jobs),
                "work_ms": round(spec.work_ms() + (final.run_ms if computed else 0.0), 3),
                "used_ms": round(used.run_ms if used is not None else 0.0, 3),
            }
        return data


def new_utterance(request: Request, settings: Settings, vad: Optional[SileroVad], scheduler: Scheduler) -> Utterance:
    """An utterance set up as the configuration asks: VAD, trimming, speculation, endpointing."""
    utt = Utterance(request=request, max_samples=int(settings.max_utterance_s * SAMPLE_RATE))
    if vad is not None:
        utt.tracker = SpeechTracker(vad, settings.vad_threshold)
        utt.endpoint_s = settings.endpoint_silence_s(request.vad_sensitivity)
        utt.min_speech_s = settings.vad_min_speech_s
        if settings.vad_trim:
            utt.trim_after_s = settings.vad_pad_after_s
            if settings.speculate:
                # Before vad_pad_after_s of silence the window is still growing: it could never match the final's.
                utt.speculator = Speculator(scheduler, max(settings.speculate_pause_s, settings.vad_pad_after_s))
    return utt

"""One utterance being received on a connection: its request, its 16 kHz audio so far, its streaming state.

Audio is converted as each chunk arrives (:class:`~wyoming_amanuensis.audio.Converter`),
so what is held is the 16 kHz float32 result, bounded by ``max_samples``,
whatever format the client sends. Partial and final transcripts are asked for
as :class:`~wyoming_amanuensis.request.Job` values built here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .audio import Converter
from .request import Job, Request
from .streaming import Stabilizer


@dataclass
class Utterance:
    """One utterance being received: its request, its 16 kHz audio so far, its streaming state."""

    request: Request
    max_samples: int
    chunks: list[np.ndarray] = field(default_factory=list)  # 16 kHz float32, as converted
    samples: int = 0
    converter: Converter = field(default_factory=Converter)
    refused: bool = False  # an error was sent; ignore the rest until the next utterance
    stream_started: bool = False  # transcript-start sent
    stabilizer: Stabilizer = field(default_factory=Stabilizer)
    partial_task: Optional[asyncio.Task] = None
    partial_at: int = 0  # samples the last partial decode saw
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def add(self, audio: np.ndarray) -> None:
        if audio.size:
            self.chunks.append(audio)
            self.samples += audio.size

    def drop_audio(self) -> None:
        self.chunks, self.samples = [], 0

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:  # keep one array: later calls copy only the new chunks
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, dtype=np.float32)

    def partial_job(self) -> Job:
        return Job(audio=self.audio(), request=dataclasses.replace(self.request, partial=True),
                   audio_ms=self.converter.ms, request_id=self.request_id)

    def final_job(self) -> Job:
        """The whole utterance (the resampler flushed); its audio leaves the utterance."""
        self.add(self.converter.flush())
        job = Job(audio=self.audio(), request=self.request, audio_ms=self.converter.ms, request_id=self.request_id)
        self.drop_audio()
        return job

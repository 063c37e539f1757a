"""What a transcription returns: text plus where the time went.

The pipeline fills these; the server copies them onto the transcript event
and telemetry publishes them. Nothing here knows about either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

@dataclass
class Timings:
    """Milliseconds per stage (and the request's cost), all filled by the engine. ``audio_ms`` is the
    conversion to 16 kHz (done as the audio arrived, by :class:`audio.Converter`);
    ``total_ms`` is that plus the wall time of the rest of the pipeline (it can
    exceed the sum of stages by the glue between them)."""

    audio_ms: float = 0.0
    mel_ms: float = 0.0
    encoder_ms: float = 0.0
    decoder_ms: float = 0.0
    alignment_ms: float = 0.0
    names_ms: float = 0.0  # reading near-miss words as the home's names (biasing.py)
    total_ms: float = 0.0
    # Time the request waited for the engine: from Job.submitted to the start of its run.
    queue_ms: float = 0.0
    # Time the NPU spent on this request's kernels (0 unless the npu backend ran).
    npu_ms: float = 0.0
    # What the request cost (cost.py): process CPU seconds over its engine stages, its
    # share of a batched decode; and the CPU package energy meanwhile, None where the
    # host's counters are absent or unreadable. Not the audio conversion or VAD done
    # as the audio arrived.
    cpu_s: float = 0.0
    energy_j: Optional[float] = None

    def as_dict(self) -> dict[str, Optional[float]]:
        return {k: None if v is None else round(v, 3) for k, v in asdict(self).items()}


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Result:
    text: str
    language: Optional[str]
    timings: Timings
    audio_seconds: float
    tokens: int
    encoder_backend: str
    model: str
    words: Optional[list[Word]] = None
    # The encoder fell back to CPU for this request (e.g. an NPU launch failed).
    encoder_fallback: bool = False
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def realtime_factor(self) -> float:
        """Processing time over audio time; below 1 is faster than real time."""
        if self.audio_seconds <= 0:
            return 0.0
        return self.timings.total_ms / 1000.0 / self.audio_seconds

    def as_dict(self) -> dict:
        out = {
            "text": self.text,
            "language": self.language,
            "timings": self.timings.as_dict(),
            "audio_seconds": round(self.audio_seconds, 3),
            "realtime_factor": round(self.realtime_factor, 4),
            "tokens": self.tokens,
            "encoder_backend": self.encoder_backend,
            "encoder_fallback": self.encoder_fallback,
            "model": self.model,
        }
        if self.words is not None:
            out["words"] = [asdict(w) for w in self.words]
        return out

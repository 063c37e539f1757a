"""Counters and a rolling window of recent requests, for the periodic stats message.

Kept free of MQTT so it can be tested with a fake clock. Everything runs on
the event loop, so the window is capped in size as well as in time.
"""

from __future__ import annotations

import collections
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

# How far back p50/p95 and the mean realtime factor look. Five minutes smooths
# single outliers yet still moves within one stats interval after a change.
WINDOW_S = 300.0
# A burst of requests must not make a snapshot expensive: beyond this many
# samples in the window the oldest are forgotten early.
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class Sample:
    at: float            # clock() when recorded
    latency_ms: float    # queue wait + pipeline total: what the client waited for
    realtime_factor: float
    npu_ms: float
    answer_ms: Optional[float]  # end of the utterance to the transcript: what the user waited for
    cpu_s: float                # process CPU seconds the engine's stages took for it (cost.py)
    energy_j: Optional[float]   # CPU package energy meanwhile; None where the counters are unavailable


@dataclass(frozen=True)
class StatsSnapshot:
    uptime_s: float
    requests: int
    errors: int
    encoder_fallbacks: int
    errors_by_code: dict[str, int]
    window_s: float
    window_samples: int
    last_latency_ms: Optional[float]
    p50_latency_ms: Optional[float]
    p95_latency_ms: Optional[float]
    mean_realtime_factor: Optional[float]
    last_answer_ms: Optional[float]
    p50_answer_ms: Optional[float]
    p95_answer_ms: Optional[float]
    speculation: dict[str, int]  # finals per speculation outcome, since start
    npu_busy_share: float
    rss_bytes: Optional[int]
    process_cpu_s: float             # the whole process's CPU time since it started
    last_cpu_s: Optional[float]
    p50_cpu_s: Optional[float]
    mean_cpu_s: Optional[float]
    last_energy_j: Optional[float]
    p50_energy_j: Optional[float]
    mean_energy_j: Optional[float]
    energy_total_j: float            # joules charged to requests since start (only ever grows)


def percentile(sorted_values: list[float], q: float) -> Optional[float]:
    """Linear interpolation between closest ranks (numpy's default), so p50 of
    two samples is their mean rather than one of them."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def process_rss_bytes() -> Optional[int]:
    """Current resident set size. /proc gives the current value; getrusage only
    the peak, which is still better than nothing off Linux."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


@dataclass
class RollingStats:
    window_s: float = WINDOW_S
    max_samples: int = MAX_SAMPLES
    clock: Callable[[], float] = time.monotonic
    requests: int = 0
    errors: int = 0
    encoder_fallbacks: int = 0  # requests whose encoder fell back to the CPU (NPU failures)
    errors_by_code: collections.Counter = field(default_factory=collections.Counter)
    last_latency_ms: Optional[float] = None
    last_answer_ms: Optional[float] = None
    last_cpu_s: Optional[float] = None
    last_energy_j: Optional[float] = None
    energy_total_j: float = 0.0
    speculation: collections.Counter = field(default_factory=collections.Counter)
    _samples: collections.deque = field(default_factory=collections.deque, repr=False)
    _started: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._samples = collections.deque(maxlen=self.max_samples)
        self._started = self.clock()

    def add(self, outcome: str, latency_ms: Optional[float] = None, realtime_factor: Optional[float] = None,
            npu_ms: float = 0.0, fallback: bool = False, answer_ms: Optional[float] = None,
            speculation: Optional[str] = None, cpu_s: float = 0.0, energy_j: Optional[float] = None) -> None:
        """Count one finished request. Only requests that produced a result carry
        a latency; an empty utterance is ok yet has none."""
        self.requests += 1
        self.encoder_fallbacks += int(fallback)
        if speculation is not None:
            self.speculation[speculation] += 1
        if answer_ms is not None:
            self.last_answer_ms = answer_ms
        if outcome != "ok":
            self.errors += 1
            self.errors_by_code[outcome] += 1
        if latency_ms is not None:
            self.last_latency_ms = latency_ms
            self.last_cpu_s, self.last_energy_j = cpu_s, energy_j
            self.energy_total_j += energy_j or 0.0
            self._samples.append(Sample(self.clock(), latency_ms, realtime_factor or 0.0, npu_ms, answer_ms,
                                        cpu_s, energy_j))

    def snapshot(self) -> StatsSnapshot:
        now = self.clock()
        while self._samples and self._samples[0].at < now - self.window_s:
            self._samples.popleft()
        samples = list(self._samples)
        latencies = sorted(s.latency_ms for s in samples)
        answers = sorted(s.answer_ms for s in samples if s.answer_ms is not None)
        cpu = sorted(s.cpu_s for s in samples)
        energy = sorted(s.energy_j for s in samples if s.energy_j is not None)
        # Busy share: NPU time over the wall time the window covers, which is
        # less than the window just after start (or a fresh start looks idle).
        span_ms = max(min(self.window_s, now - self._started), 1e-3) * 1000.0
        return StatsSnapshot(
            uptime_s=now - self._started,
            requests=self.requests,
            errors=self.errors,
            encoder_fallbacks=self.encoder_fallbacks,
            errors_by_code=dict(self.errors_by_code),
            window_s=self.window_s,
            window_samples=len(samples),
            last_latency_ms=self.last_latency_ms,
            p50_latency_ms=percentile(latencies, 50),
            p95_latency_ms=percentile(latencies, 95),
            mean_realtime_factor=(sum(s.realtime_factor for s in samples) / len(samples)) if samples else None,
            last_answer_ms=self.last_answer_ms,
            p50_answer_ms=percentile(answers, 50),
            p95_answer_ms=percentile(answers, 95),
            speculation=dict(self.speculation),
            npu_busy_share=min(sum(s.npu_ms for s in samples) / span_ms, 1.0),
            rss_bytes=process_rss_bytes(),
            process_cpu_s=time.process_time(),
            last_cpu_s=self.last_cpu_s,
            p50_cpu_s=percentile(cpu, 50),
            mean_cpu_s=mean(cpu),
            last_energy_j=self.last_energy_j,
            p50_energy_j=percentile(energy, 50),
            mean_energy_j=mean(energy),
            energy_total_j=self.energy_total_j,
        )

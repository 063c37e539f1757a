"""Counters and a rolling window of recent requests, summarised for the stats message."""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from .payloads import RequestEvent

WINDOW = 200  # recent successful requests the percentiles are taken over


def _percentile(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class _Sample:
    at: float
    total_ms: float
    rtf: float
    npu_ms: float


class RollingStats:
    def __init__(self, encoder_backend: str, window: int = WINDOW):
        self.encoder_backend = encoder_backend
        self.requests = 0
        self.errors = 0
        self.fallbacks = 0
        self.dropped = 0  # telemetry messages dropped because the queue was full
        self.last_latency_ms: Optional[float] = None
        self._window: deque[_Sample] = deque(maxlen=window)

    def add(self, event: RequestEvent) -> None:
        self.requests += 1
        if event.outcome != "ok":
            self.errors += 1
        r = event.result
        if r is None:
            return
        if r.encoder_fallback:
            self.fallbacks += 1
        latency = r.timings.total_ms + event.queue_ms
        self.last_latency_ms = latency
        self._window.append(_Sample(time.monotonic(), latency, r.realtime_factor, r.timings.npu_ms))

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(s.total_ms for s in self._window)
        rtfs = [s.rtf for s in self._window]
        out: dict[str, Any] = {
            "requests": self.requests,
            "errors": self.errors,
            "window": len(lat),
            "last_latency_ms": None if self.last_latency_ms is None else round(self.last_latency_ms, 1),
            "p50_latency_ms": None if not lat else round(_percentile(lat, 0.5), 1),
            "p95_latency_ms": None if not lat else round(_percentile(lat, 0.95), 1),
            "mean_realtime_factor": round(sum(rtfs) / len(rtfs), 4) if rtfs else None,
            "rss_bytes": rss_bytes(),
            "encoder_backend": self.encoder_backend,
            "encoder_fallbacks": self.fallbacks,
            "telemetry_dropped": self.dropped,
        }
        if self.encoder_backend == "npu" and len(self._window) >= 2:
            span_ms = (self._window[-1].at - self._window[0].at) * 1000.0 + self._window[-1].total_ms
            out["npu_busy_share"] = round(sum(s.npu_ms for s in self._window) / span_ms, 4) if span_ms > 0 else None
        return out

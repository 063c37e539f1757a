"""Where every MQTT topic and payload is built: pure functions, no I/O.

Topic layout (``<prefix>`` defaults to ``amanuensis/<instance>``)::

    <prefix>/status     online | offline        retained; offline is also the last will
    <prefix>/request    one JSON per request     not retained (events, not state)
    <prefix>/stats      JSON stats               retained (so Home Assistant has values at once)
    <discovery>/sensor/<node_id>/<object_id>/config   Home Assistant discovery, retained

The per-request ``timings`` object is the Result's ``Timings.as_dict()``, the
very dict the server puts on the transcript event, so the two cannot drift.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..config import Settings
from ..cost import EnergyStatus
from ..result import Result
from ..speculation import OUTCOMES, USED
from .stats import StatsSnapshot

ONLINE = "online"
OFFLINE = "offline"
DEVICE_NAME = "Amanuensis"


@dataclass(frozen=True)
class Topics:
    status: str
    request: str
    stats: str
    discovery_prefix: str
    node_id: str

    def discovery(self, object_id: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node_id}/{object_id}/config"


def node_id(instance: str) -> str:
    """Home Assistant accepts only [a-zA-Z0-9_-] in discovery topic segments."""
    return "amanuensis_" + (re.sub(r"[^a-zA-Z0-9_-]+", "_", instance).strip("_") or "default")


def topics_for(settings: Settings) -> Topics:
    prefix = settings.topic_prefix.rstrip("/")
    return Topics(
        status=f"{prefix}/status",
        request=f"{prefix}/request",
        stats=f"{prefix}/stats",
        discovery_prefix=settings.mqtt_discovery_prefix.rstrip("/"),
        node_id=node_id(settings.instance),
    )


@dataclass
class RequestEvent:
    """One finished request, as the server reports it to ``Telemetry.record``."""

    request_id: str
    model: str
    language: Optional[str]
    outcome: str                     # "ok" or an error code string such as "audio-too-long"
    result: Optional[Result] = None  # None when the request failed before a result existed
    answer_ms: Optional[float] = None  # end of the utterance (audio-stop or endpoint) to the transcript
    speculation: Optional[str] = None  # speculation.OUTCOMES; None when speculation is off or it failed


def latency_ms(event: RequestEvent) -> Optional[float]:
    """What the client waited for: queue wait plus the pipeline's time, summed from the
    published (rounded) timings so that the payload's fields add up exactly."""
    if event.result is None:
        return None
    t = event.result.timings.as_dict()
    return round(t["queue_ms"] + t["total_ms"], 3)


def request_payload(event: RequestEvent, *, include_text: bool, default_backend: str,
                    now: Optional[float] = None) -> dict[str, Any]:
    """Every key is always present (null where a failed request has no value),
    so consumers need no per-outcome schema. ``default_backend`` is the
    configured encoder backend, reported for requests that never reached it."""
    result = event.result
    payload: dict[str, Any] = {
        "request_id": event.request_id,
        "timestamp": round(time.time() if now is None else now, 3),
        "model": event.model,
        "language": event.language,
        "outcome": event.outcome,
        "encoder_backend": result.encoder_backend if result else default_backend,
        "encoder_fallback": bool(result and result.encoder_fallback),
        "audio_seconds": round(result.audio_seconds, 3) if result else None,
        "latency_ms": latency_ms(event),
        "queue_ms": round(result.timings.queue_ms, 3) if result else None,
        "timings": result.timings.as_dict() if result else None,
        "realtime_factor": round(result.realtime_factor, 4) if result else None,
        "tokens": result.tokens if result else None,
        "answer_ms": None if event.answer_ms is None else round(event.answer_ms, 3),
        "speculation": event.speculation,
    }
    if include_text:
        payload["text"] = result.text if result else None
    return payload


def stats_payload(snapshot: StatsSnapshot, *, encoder_backend: str, models: list[str], version: str,
                  dropped: int, energy: EnergyStatus, backend_stats: Optional[dict] = None,
                  now: Optional[float] = None) -> dict[str, Any]:
    """``backend_stats``: the encoder backend's own counters (the NPU's: precision,
    fallbacks, disabled state and why), published as ``npu``; null for torch.
    ``energy``: whether the host's energy counters are read (``energy_meter``);
    where they are not, the energy figures are null, not 0."""
    def rounded(v: Optional[float], digits: int = 3) -> Optional[float]:
        return None if v is None else round(v, digits)

    return {
        "timestamp": round(time.time() if now is None else now, 3),
        "version": version,
        "models": list(models),
        "encoder_backend": encoder_backend,
        "uptime_s": round(snapshot.uptime_s, 1),
        "requests": snapshot.requests,
        "errors": snapshot.errors,
        "encoder_fallbacks": snapshot.encoder_fallbacks,
        "errors_by_code": dict(sorted(snapshot.errors_by_code.items())),
        "window_s": snapshot.window_s,
        "window_samples": snapshot.window_samples,
        "latency_ms": {
            "last": rounded(snapshot.last_latency_ms),
            "p50": rounded(snapshot.p50_latency_ms),
            "p95": rounded(snapshot.p95_latency_ms),
        },
        "mean_realtime_factor": rounded(snapshot.mean_realtime_factor, 4),
        # From the end of the utterance (audio-stop, or the server's endpoint) to the transcript.
        "answer_ms": {
            "last": rounded(snapshot.last_answer_ms),
            "p50": rounded(snapshot.p50_answer_ms),
            "p95": rounded(snapshot.p95_answer_ms),
        },
        "speculation": speculation_stats(snapshot.speculation),
        "rss_bytes": snapshot.rss_bytes,
        "process_cpu_s": round(snapshot.process_cpu_s, 3),
        # What one command cost (cost.py): process CPU seconds over its engine stages and the
        # CPU package energy meanwhile, over the same window as the latencies.
        "cpu_s_per_command": {
            "last": rounded(snapshot.last_cpu_s, 4),
            "p50": rounded(snapshot.p50_cpu_s, 4),
            "mean": rounded(snapshot.mean_cpu_s, 4),
        },
        "energy_j_per_command": {
            "last": rounded(snapshot.last_energy_j),
            "p50": rounded(snapshot.p50_energy_j),
            "mean": rounded(snapshot.mean_energy_j),
        },
        "energy_j_total": round(snapshot.energy_total_j, 3) if energy.available else None,
        "energy_meter": energy.as_dict(),
        # Only meaningful where an NPU does the work; null elsewhere so a dashboard
        # does not show a misleading 0 %.
        "npu_busy_share": round(snapshot.npu_busy_share, 4) if encoder_backend == "npu" else None,
        "npu": backend_stats,
        "telemetry_dropped": dropped,
    }


def speculation_stats(counts: dict[str, int]) -> dict[str, Any]:
    """Finals per speculation outcome and the share answered from a speculation
    (null until a final with speculation on has finished)."""
    out: dict[str, Any] = {k: counts.get(k, 0) for k in OUTCOMES}
    total = sum(out.values())
    out["hit_rate_pct"] = round(100.0 * sum(out[k] for k in USED) / total, 2) if total else None
    return out


@dataclass(frozen=True)
class SensorSpec:
    object_id: str
    name: str
    value_template: str             # applied to the stats payload
    unit: Optional[str] = None
    device_class: Optional[str] = None
    state_class: Optional[str] = None
    precision: Optional[int] = None
    icon: Optional[str] = None
    diagnostic: bool = False
    needs_energy: bool = False      # only declared where the host's energy counters are read


# All sensors read the retained stats topic: Home Assistant gets every value
# right after a restart, and a failed request (no latency) cannot blank one.
SENSORS: tuple[SensorSpec, ...] = (
    SensorSpec("last_latency", "Last latency", "{{ value_json.latency_ms.last }}",
               unit="ms", device_class="duration", state_class="measurement", precision=0),
    SensorSpec("p95_latency", "P95 latency", "{{ value_json.latency_ms.p95 }}",
               unit="ms", device_class="duration", state_class="measurement", precision=0),
    SensorSpec("p95_answer", "P95 answer time", "{{ value_json.answer_ms.p95 }}",
               unit="ms", device_class="duration", state_class="measurement", precision=0),
    SensorSpec("speculation_hit_rate", "Speculation hit rate",
               "{{ value_json.speculation.hit_rate_pct }}",
               unit="%", state_class="measurement", precision=0, icon="mdi:crystal-ball", diagnostic=True),
    SensorSpec("realtime_factor", "Realtime factor", "{{ value_json.mean_realtime_factor }}",
               state_class="measurement", precision=3, icon="mdi:speedometer"),
    SensorSpec("requests", "Requests", "{{ value_json.requests }}",
               state_class="total_increasing", icon="mdi:counter"),
    SensorSpec("errors", "Errors", "{{ value_json.errors }}",
               state_class="total_increasing", icon="mdi:alert-circle-outline"),
    SensorSpec("backend", "Encoder backend", "{{ value_json.encoder_backend }}",
               icon="mdi:chip", diagnostic=True),
    # Requests the NPU could not encode (run on the CPU instead); with the NPU
    # given up for good, the stats' npu.disabled_reason says why.
    SensorSpec("encoder_fallbacks", "Encoder fallbacks", "{{ value_json.encoder_fallbacks }}",
               state_class="total_increasing", icon="mdi:swap-horizontal", diagnostic=True),
    SensorSpec("cpu_per_command", "CPU time per command", "{{ value_json.cpu_s_per_command.mean }}",
               unit="s", device_class="duration", state_class="measurement", precision=3, icon="mdi:cpu-64-bit"),
    # Home Assistant's energy device class accepts J but only with state_class total or
    # total_increasing (2025.4: sensor/const.py DEVICE_CLASS_STATE_CLASSES); a per-command
    # figure is a measurement, so it carries the unit without the class, and the running
    # total is the energy-class sensor (usable in statistics and the energy dashboard).
    SensorSpec("energy_per_command", "Energy per command", "{{ value_json.energy_j_per_command.mean }}",
               unit="J", state_class="measurement", precision=2, icon="mdi:lightning-bolt", needs_energy=True),
    SensorSpec("energy_total", "Energy used by commands", "{{ value_json.energy_j_total }}",
               unit="J", device_class="energy", state_class="total_increasing", precision=0,
               needs_energy=True),
)


def discovery_configs(topics: Topics, *, version: str, models: list[str],
                      energy_available: bool) -> list[tuple[str, Optional[dict[str, Any]]]]:
    """(topic, config) for each Home Assistant sensor; all of them share one device
    block, which is what groups them under the single device "Amanuensis". Energy
    sensors on a host without readable counters get None: published as an empty
    retained config, which removes an entity an earlier run declared."""
    device = {
        "identifiers": [topics.node_id],
        "name": DEVICE_NAME,
        "manufacturer": "Amanuensis",
        "model": f"Whisper speech-to-text ({', '.join(models)})" if models else "Whisper speech-to-text",
        "sw_version": version,
    }
    out = []
    for spec in SENSORS:
        if spec.needs_energy and not energy_available:
            out.append((topics.discovery(spec.object_id), None))
            continue
        config: dict[str, Any] = {
            "name": spec.name,
            "unique_id": f"{topics.node_id}_{spec.object_id}",
            "state_topic": topics.stats,
            "value_template": spec.value_template,
            "availability_topic": topics.status,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": device,
            "origin": {"name": "wyoming-amanuensis", "sw_version": version},
        }
        optional = {"unit_of_measurement": spec.unit, "device_class": spec.device_class,
                    "state_class": spec.state_class, "suggested_display_precision": spec.precision,
                    "icon": spec.icon, "entity_category": "diagnostic" if spec.diagnostic else None}
        config.update({k: v for k, v in optional.items() if v is not None})
        out.append((topics.discovery(spec.object_id), config))
    return out


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

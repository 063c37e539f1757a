"""Topics and JSON payloads: the one place that decides what telemetry looks like.

Topic layout under the prefix (default ``amanuensis/<instance>``):

    <prefix>/status     "online" / "offline" (retained; "offline" is the last will)
    <prefix>/request    one JSON message per finished or failed request
    <prefix>/stats      periodic JSON summary (retained, so a new subscriber sees it at once)
    <discovery>/sensor/amanuensis_<instance>/<key>/config   Home Assistant discovery (retained)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from ..config import Settings
from ..result import Result

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"


@dataclass
class RequestEvent:
    request_id: str
    model: str
    language: Optional[str]
    outcome: str  # "ok" or an error code such as "audio-too-long"
    result: Optional[Result] = None  # None when the request failed before a result existed
    queue_ms: float = 0.0
    encoder_backend: str = ""


@dataclass(frozen=True)
class Topics:
    status: str
    request: str
    stats: str
    discovery_prefix: str
    node_id: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "Topics":
        prefix = settings.topic_prefix.rstrip("/")
        node = "amanuensis_" + re.sub(r"[^a-zA-Z0-9_-]", "_", settings.instance)
        return cls(status=f"{prefix}/status", request=f"{prefix}/request", stats=f"{prefix}/stats",
                   discovery_prefix=settings.mqtt_discovery_prefix.rstrip("/"), node_id=node)

    def discovery(self, key: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node_id}/{key}/config"


def request_payload(event: RequestEvent, include_text: bool) -> dict[str, Any]:
    """Per-request message: the transcript event's timings, plus outcome and queue wait."""
    r = event.result
    body: dict[str, Any] = {
        "request_id": event.request_id,
        "model": event.model,
        "language": event.language,
        "encoder_backend": (r.encoder_backend if r else event.encoder_backend) or None,
        "outcome": event.outcome,
        "queue_ms": round(event.queue_ms, 3),
    }
    if r is not None:
        t = r.timings.as_dict()
        body.update(
            audio_seconds=round(r.audio_seconds, 3),
            timings={k: t[k] for k in ("audio_ms", "mel_ms", "encoder_ms", "decoder_ms", "alignment_ms", "total_ms", "npu_ms")},
            realtime_factor=round(r.realtime_factor, 4),
            tokens=r.tokens,
            encoder_fallback=r.encoder_fallback,
        )
        if include_text:
            body["text"] = r.text
    return body


# key: (name, unit, state_class, value_template, icon)
SENSORS: dict[str, tuple[str, Optional[str], Optional[str], str, str]] = {
    "last_latency": ("Last latency", "ms", "measurement", "{{ value_json.last_latency_ms }}", "mdi:timer-outline"),
    "p95_latency": ("p95 latency", "ms", "measurement", "{{ value_json.p95_latency_ms }}", "mdi:timer-alert-outline"),
    "realtime_factor": ("Realtime factor", None, "measurement", "{{ value_json.mean_realtime_factor }}", "mdi:speedometer"),
    "requests": ("Requests", None, "total_increasing", "{{ value_json.requests }}", "mdi:counter"),
    "errors": ("Errors", None, "total_increasing", "{{ value_json.errors }}", "mdi:alert-circle-outline"),
    "backend": ("Encoder backend", None, None, "{{ value_json.encoder_backend }}", "mdi:chip"),
}


def discovery_configs(settings: Settings, topics: Topics, *, version: str, models: list[str]) -> list[tuple[str, dict]]:
    """Retained configs that make Home Assistant create one "Amanuensis" device with its sensors."""
    device = {
        "identifiers": [topics.node_id],
        "name": "Amanuensis" if settings.instance in ("", "amanuensis") else f"Amanuensis ({settings.instance})",
        "manufacturer": "Amanuensis",
        "model": f"Whisper STT ({', '.join(models)})",
        "sw_version": version,
    }
    out = []
    for key, (name, unit, state_class, template, icon) in SENSORS.items():
        config: dict[str, Any] = {
            "name": name,
            "unique_id": f"{topics.node_id}_{key}",
            "object_id": f"{topics.node_id}_{key}",
            "state_topic": topics.stats,
            "value_template": template,
            "availability_topic": topics.status,
            "payload_available": STATUS_ONLINE,
            "payload_not_available": STATUS_OFFLINE,
            "icon": icon,
            "device": device,
        }
        if unit:
            config["unit_of_measurement"] = unit
        if unit == "ms":
            config["device_class"] = "duration"
        if state_class:
            config["state_class"] = state_class
        out.append((topics.discovery(key), config))
    return out

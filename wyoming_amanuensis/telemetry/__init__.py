"""Timing telemetry over MQTT, with Home Assistant discovery.

    payloads.py   every topic and JSON body (per request, stats, HA discovery): pure functions
    stats.py      counters and the rolling latency window behind the stats message
    publisher.py  the aiomqtt connection loop: bounded queue, last will, backoff, state logging

The server calls :meth:`Telemetry.record` once per finished request; that call
counts the request, builds its JSON and queues it for the background
connection. Nothing here can slow down or fail a transcription: with no broker
configured every method is a no-op, and with one the broker's health only ever
shows up in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable, Optional

from ..config import Settings
from ..cost import EnergyStatus
from .payloads import OFFLINE, ONLINE, RequestEvent, Topics, discovery_configs, encode, latency_ms, \
    request_payload, stats_payload, topics_for
from .publisher import BrokerConfig, Message, Publisher, wake
from .stats import RollingStats

__all__ = ["RequestEvent", "Telemetry"]

_LOG = logging.getLogger(__name__)

# After requests the stats message follows within this (so Home Assistant's
# counters move with the requests), coalesced so a burst sends one.
STATS_AFTER_REQUEST_S = 1.0


class Telemetry:
    def __init__(self, settings: Settings, *, encoder_backend: Callable[[], str], models: list[str], version: str,
                 backend_stats: Callable[[], Optional[dict]] = lambda: None,
                 energy_status: Callable[[], EnergyStatus] = lambda: EnergyStatus(False, reason="not measured")) -> None:
        self.settings = settings
        self.backend_stats = backend_stats
        self.energy_status = energy_status
        self.encoder_backend = encoder_backend  # asked each time: "auto" until the engine has chosen
        self.models = list(models)
        self.version = version
        self.topics: Topics = topics_for(settings)
        self.stats = RollingStats()
        self._qos = settings.mqtt_qos
        # Status and discovery are state, not samples: they must arrive even when
        # per-request messages are configured as fire-and-forget QoS 0.
        self._control_qos = max(1, settings.mqtt_qos)
        self._record_failures: set[str] = set()
        self._stats_task: Optional[asyncio.Task] = None
        self._stats_due = asyncio.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.publisher: Optional[Publisher] = None
        if settings.telemetry_enabled:
            self.publisher = Publisher(
                BrokerConfig.from_settings(settings),
                will=self._status(OFFLINE),
                queue_size=settings.mqtt_queue_size,
                on_connect=self._on_connect_messages,
            )

    @property
    def enabled(self) -> bool:
        return self.publisher is not None

    async def start(self) -> None:
        """Returns at once; the connection is made (and remade) in the background."""
        if self.publisher is None or self._stats_task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stats_due = asyncio.Event()
        await self.publisher.start()
        self._stats_task = asyncio.create_task(self._stats_loop(), name="mqtt telemetry stats")

    async def stop(self) -> None:
        """Publish the retained ``offline`` status and disconnect (bounded time)."""
        if self.publisher is None:
            return
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self.publisher.submit(self._stats_message())  # final counts, flushed before offline
        await self.publisher.stop(final=self._status(OFFLINE))

    def record(self, event: RequestEvent) -> None:
        """Count and queue one finished request. Never blocks, never raises."""
        if self.publisher is None:
            return
        try:
            result = event.result
            self.stats.add(event.outcome, latency_ms(event),
                           result.realtime_factor if result else None,
                           result.timings.npu_ms if result else 0.0,
                           fallback=bool(result and result.encoder_fallback),
                           answer_ms=event.answer_ms, speculation=event.speculation,
                           cpu_s=result.timings.cpu_s if result else 0.0,
                           energy_j=result.timings.energy_j if result else None)
            payload = request_payload(event, include_text=self.settings.mqtt_include_text,
                                      default_backend=self.encoder_backend())
            self.publisher.submit(Message(self.topics.request, encode(payload), qos=self._qos))
            wake(self._loop, self._stats_due)
        except Exception as err:  # noqa: BLE001 - telemetry must never break a request
            # Once per kind of failure: a bug here would otherwise log on every request.
            kind = type(err).__name__
            if kind not in self._record_failures:
                self._record_failures.add(kind)
                _LOG.exception("telemetry: could not record request %s", getattr(event, "request_id", "?"))

    def stats_snapshot(self) -> dict:
        """The stats payload as it would be published now."""
        return stats_payload(self.stats.snapshot(), encoder_backend=self.encoder_backend(), models=self.models,
                             version=self.version, dropped=self.publisher.dropped if self.publisher else 0,
                             energy=self.energy_status(), backend_stats=self.backend_stats())

    # ------------------------------------------------------------------ internals
    def _status(self, value: str) -> Message:
        return Message(self.topics.status, value.encode(), qos=self._control_qos, retain=True)

    def _stats_message(self) -> Message:
        return Message(self.topics.stats, encode(self.stats_snapshot()), qos=self._qos, retain=True)

    def _on_connect_messages(self) -> list[Message]:
        """Retained state, re-sent on every (re)connection because a restarted
        broker without persistence has forgotten it: discovery first so Home
        Assistant knows the entities before their availability and values."""
        configs = discovery_configs(self.topics, version=self.version, models=self.models,
                                    energy_available=self.energy_status().available)
        messages = [Message(topic, b"" if config is None else encode(config), qos=self._control_qos, retain=True)
                    for topic, config in configs]
        messages.append(self._status(ONLINE))
        messages.append(self._stats_message())
        return messages

    async def _stats_loop(self) -> None:
        assert self.publisher is not None
        interval = self.settings.mqtt_stats_interval_s
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stats_due.wait(), interval)
            self._stats_due.clear()
            try:
                self.publisher.submit(self._stats_message())
            except Exception:  # noqa: BLE001 - a stats bug must not end the loop
                _LOG.exception("telemetry: could not build the stats message")
            await asyncio.sleep(min(STATS_AFTER_REQUEST_S, interval))

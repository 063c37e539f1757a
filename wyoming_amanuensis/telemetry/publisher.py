"""The MQTT side: one background task that keeps a connection and drains a bounded queue.

Transcription never waits for it. ``record`` only appends to a deque (the
oldest message is dropped, and counted, when it is full); the task connects
with ``offline`` as the retained last will, announces ``online`` and the
Home Assistant discovery configs, then publishes whatever is queued plus a
stats message after requests and every ``mqtt_stats_interval_s``. A broker
that is down, dies or refuses the credentials is logged once per change of
state and retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
from collections import deque
from typing import Any, Optional

import aiomqtt

from ..config import Settings
from .payloads import STATUS_OFFLINE, STATUS_ONLINE, RequestEvent, Topics, discovery_configs, request_payload
from .stats import RollingStats

_LOG = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
STOP_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 5.0


class Telemetry:
    def __init__(self, settings: Settings, *, encoder_backend: str, models: list[str], version: str):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.version = version
        self.models = models
        self.stats = RollingStats(encoder_backend)
        self._queue: deque[tuple[str, str, int, bool]] = deque()
        self._lock = threading.Lock()  # record() may be called from worker threads
        self._wake: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._task: Optional[asyncio.Task] = None
        self._stopping = False
        self._stats_due = False
        self.state = "idle"  # idle | connected | down | refused | stopped
        self.connections = 0  # successful connects, for tests and logs

    @property
    def enabled(self) -> bool:
        return self.settings.telemetry_enabled

    # ----------------------------------------------------------- public API
    async def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="amanuensis-telemetry")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stopping = True
        self._kick()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stopping must not raise
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None
        self._set_state("stopped")

    def record(self, event: RequestEvent) -> None:
        """Queue the request's message; never blocks, never raises."""
        if not self.enabled:
            return
        try:
            body = json.dumps(request_payload(event, self.settings.mqtt_include_text), ensure_ascii=False)
            with self._lock:
                self.stats.add(event)
                self._stats_due = True
                self._enqueue(self.topics.request, body, self.settings.mqtt_qos, False)
            self._kick()
        except Exception:  # noqa: BLE001 - telemetry must never break a request
            _LOG.exception("telemetry: cannot record request %s", getattr(event, "request_id", "?"))

    def stats_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.stats.snapshot()

    # ------------------------------------------------------------- internals
    def _enqueue(self, topic: str, body: str, qos: int, retain: bool) -> None:
        if len(self._queue) >= self.settings.mqtt_queue_size:
            self._queue.popleft()
            self.stats.dropped += 1
        self._queue.append((topic, body, qos, retain))

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        where = f"{self.settings.mqtt_host}:{self.settings.mqtt_port}"
        if state == "connected":
            _LOG.info("telemetry: connected to MQTT broker %s", where)
        elif state in ("down", "refused"):
            _LOG.warning("telemetry: MQTT broker %s %s (%s); retrying in the background, transcription unaffected",
                         where, "refused the connection" if state == "refused" else "unreachable", detail)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        tls = None
        if s.mqtt_tls:
            tls = aiomqtt.TLSParameters(ca_certs=s.mqtt_ca_file, certfile=s.mqtt_cert_file, keyfile=s.mqtt_key_file,
                                        cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        return aiomqtt.Client(
            s.mqtt_host,
            port=s.mqtt_port,
            username=s.mqtt_username,
            password=s.mqtt_password_value(),
            identifier=s.mqtt_client_id or f"amanuensis-{s.instance}",
            will=aiomqtt.Will(self.topics.status, STATUS_OFFLINE, qos=1, retain=True),
            tls_params=tls,
            keepalive=30,
            timeout=CONNECT_TIMEOUT_S,
        )

    async def _run(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._stopping:
            try:
                async with self._client() as client:
                    self.connections += 1
                    self._set_state("connected")
                    delay = BACKOFF_FIRST_S
                    await self._announce(client)
                    await self._serve(client)
                    return  # stopping: offline was published inside _serve
            except aiomqtt.MqttCodeError as err:
                refused = getattr(err, "rc", None) is not None and self.state != "connected"
                self._set_state("refused" if refused else "down", str(err))
            except (aiomqtt.MqttError, OSError) as err:
                self._set_state("down", str(err) or type(err).__name__)
            if self._stopping:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wait_for_stop(), delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _wait_for_stop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def _announce(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topics.status, STATUS_ONLINE, qos=1, retain=True)
        for topic, config in discovery_configs(self.settings, self.topics, version=self.version, models=self.models):
            await client.publish(topic, json.dumps(config), qos=1, retain=True)
        self._stats_due = True

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Drain the queue until stopping; raises MqttError when the connection is lost."""
        interval = self.settings.mqtt_stats_interval_s
        loop = asyncio.get_running_loop()
        next_stats = loop.time()
        # paho only notices a dead broker on traffic or keepalive; listening for
        # messages (none are subscribed) surfaces the loss as an MqttError.
        watcher = asyncio.create_task(self._watch(client))
        try:
            while True:
                await self._flush(client)
                if self._stats_due or loop.time() >= next_stats:
                    with self._lock:
                        body = json.dumps(self.stats.snapshot())
                        self._stats_due = False
                    await client.publish(self.topics.stats, body, qos=self.settings.mqtt_qos, retain=True)
                    next_stats = loop.time() + interval
                if self._stopping:
                    await client.publish(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
                    return
                self._wake.clear()
                if self._queue or self._stats_due or self._stopping:
                    continue
                waiter = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait({waiter, watcher}, timeout=max(0.0, next_stats - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if watcher in done:
                    waiter.cancel()
                    watcher.result()  # raises the connection error
                    raise aiomqtt.MqttError("connection closed")
                waiter.cancel()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        async for _ in client.messages:
            pass

    async def _flush(self, client: aiomqtt.Client) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                topic, body, qos, retain = self._queue[0]
            await client.publish(topic, body, qos=qos, retain=retain)
            with self._lock:
                # only now is it sent; on a failure above it stays queued for the next connection
                if self._queue and self._queue[0][0] == topic and self._queue[0][1] == body:
                    self._queue.popleft()

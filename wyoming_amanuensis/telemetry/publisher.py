"""The MQTT connection: one background task, a bounded queue, backoff, last will.

Transcription must never wait on the broker, so :meth:`Publisher.submit` only
appends to an in-memory queue (dropping the oldest message when full) and the
connection task drains it whenever a broker is there. The task survives every
failure (broker down at start, killed mid-run, credentials refused, TLS
errors) by retrying with capped exponential backoff, and logs once per change
of state rather than once per attempt, so a broker that is away for a day
does not fill the log.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from ..config import Settings
from ..tasks import until_first_ends

_LOG = logging.getLogger(__name__)

# Retry delays: quick enough that a restarted broker sees us again within about
# a second, capped so a broker that stays away costs one attempt a minute.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 60.0
KEEPALIVE_S = 30            # a silently vanished broker is noticed within 1.5x this
OPERATION_TIMEOUT_S = 5.0   # CONNACK / PUBACK wait inside aiomqtt (also: a TLS 1.3 handshake the
                            # broker rejects after the fact only shows as a missing CONNACK)
STOP_TIMEOUT_S = 3.0        # stop() flushes and says offline within this, or gives up


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    client_id: str
    username: Optional[str]
    password: Callable[[], Optional[str]]  # called per attempt: a changed password file is picked up
    tls: Optional[aiomqtt.TLSParameters]

    @classmethod
    def from_settings(cls, settings: Settings) -> "BrokerConfig":
        tls = None
        if settings.mqtt_tls:
            tls = aiomqtt.TLSParameters(ca_certs=settings.mqtt_ca_file, certfile=settings.mqtt_cert_file,
                                        keyfile=settings.mqtt_key_file)
        elif settings.mqtt_ca_file or settings.mqtt_cert_file:
            _LOG.warning("telemetry: mqtt_ca_file/mqtt_cert_file are set but mqtt_tls is off: connecting without TLS")
        return cls(
            host=str(settings.mqtt_host),
            port=settings.mqtt_port,
            client_id=settings.mqtt_client_id or f"amanuensis-{settings.instance}",
            username=settings.mqtt_username,
            password=settings.mqtt_password_value,
            tls=tls,
        )


class _QuietClientLog(logging.LoggerAdapter):
    """paho and aiomqtt log every failed attempt, some at ERROR; the publisher's
    own state-change lines already say it once, so theirs go to DEBUG."""

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)  # type: ignore[arg-type]


def wake(loop: Optional[asyncio.AbstractEventLoop], event: asyncio.Event) -> None:
    """Set ``event`` from any thread (asyncio.Event is not thread-safe)."""
    if loop is None or loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        event.set()
    else:
        loop.call_soon_threadsafe(event.set)


class Publisher:
    """Owns the broker connection. ``state`` is one of: idle, connecting,
    connected, unreachable, refused, lost, stopped."""

    def __init__(self, broker: BrokerConfig, *, will: Message, queue_size: int,
                 on_connect: Callable[[], list[Message]]) -> None:
        self.broker = broker
        self.will = will
        self.queue_size = queue_size
        self.on_connect = on_connect  # sent first on every connection: the retained state
        self.state = "idle"
        self.attempts = 0      # connection attempts so far (tests and diagnostics)
        self.connections = 0   # successful ones
        self.dropped = 0       # messages dropped because the queue was full
        self._queue: collections.deque[Message] = collections.deque()
        self._state: dict[str, Message] = {}  # newest retained message per topic
        self._lock = threading.Lock()  # submit() may come from a worker thread
        self._wake = asyncio.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._task: Optional[asyncio.Task] = None
        self._stopping = False
        self._final: Optional[Message] = None
        self._logged: Optional[tuple[str, str]] = None

    # ------------------------------------------------------------- producer
    def submit(self, message: Message) -> None:
        """Queue a message; never blocks, never waits for the broker.

        Events (not retained) go through the bounded FIFO, oldest dropped first.
        Retained messages are state: only the newest per topic matters, so it
        replaces any older one still waiting, and state never evicts events."""
        with self._lock:
            if message.retain:
                self._state.pop(message.topic, None)
                self._state[message.topic] = message
            else:
                if len(self._queue) >= self.queue_size:
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(message)
        wake(self._loop, self._wake)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._state)

    def _pop(self) -> Optional[Message]:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if self._state:
                return self._state.pop(next(iter(self._state)))
            return None

    def _push_back(self, message: Message) -> None:
        """Return an unsent message for the next connection, unless something newer took its place."""
        with self._lock:
            if message.retain:
                self._state.setdefault(message.topic, message)
            elif len(self._queue) < self.queue_size:
                self._queue.appendleft(message)
            else:
                self.dropped += 1

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mqtt telemetry")

    async def stop(self, final: Optional[Message] = None, timeout: float = STOP_TIMEOUT_S) -> None:
        """Flush the queue, publish ``final`` (the retained offline status) and
        disconnect cleanly, so the broker does not fire the last will. Bounded by
        ``timeout``; with no broker there is nothing to flush to."""
        if self._task is None or self._stopping:
            return
        self._stopping = True
        self._final = final
        self._wake.set()
        task = self._task
        if self.state != "connected":
            task.cancel()  # between attempts or mid-connect
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        self._set_state("stopped")

    # ----------------------------------------------------------- connection
    async def _run(self) -> None:
        delay = BACKOFF_INITIAL_S
        while not self._stopping:
            self.attempts += 1
            if self.state not in ("unreachable", "refused", "lost"):
                self._set_state("connecting")
            try:
                await self._session()  # returns only when asked to stop
            except MqttConnectError as err:
                self._set_state("refused", str(err))
            except aiomqtt.MqttError as err:
                if self.state == "connected":
                    self._set_state("lost", str(err))
                    delay = BACKOFF_INITIAL_S  # it was fine a moment ago: retry soon
                else:
                    self._set_state("unreachable", str(err))
            except Exception as err:  # noqa: BLE001 - e.g. an unreadable password file; keep trying
                self._set_state("unreachable", f"{type(err).__name__}: {err}")
            if self._stopping:
                return
            # Jitter keeps several instances from reconnecting in lockstep.
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _session(self) -> None:
        b = self.broker
        client = aiomqtt.Client(
            b.host, b.port, identifier=b.client_id, username=b.username,
            password=b.password() if b.username else None,
            will=aiomqtt.Will(self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain),
            tls_params=b.tls, keepalive=KEEPALIVE_S, timeout=OPERATION_TIMEOUT_S,
            logger=_QuietClientLog(logging.getLogger(__name__ + ".client"), {}),  # type: ignore[arg-type]
        )
        async with client:
            self.connections += 1
            self._set_state("connected")
            for message in self.on_connect():
                await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            # aiomqtt reports a dropped connection only to someone waiting on it:
            # the (empty) message iterator raises MqttError when the link goes.
            await until_first_ends(self._pump(client), self._watch(client))  # re-raises the MqttError that ended it
            if self._final is not None:
                f = self._final
                await client.publish(f.topic, f.payload, qos=f.qos, retain=f.retain)

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        async for _ in client.messages:
            pass

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish queued messages until stopping (queue empty) or the link fails."""
        while True:
            message = self._pop()
            if message is None:
                if self._stopping:
                    return
                self._wake.clear()
                if not self.pending():
                    await self._wake.wait()
                continue
            try:
                await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            except BaseException:
                # Broker gone (or we are cancelled because it went): keep the message
                # for the next connection. At worst it arrives twice.
                self._push_back(message)
                raise

    # -------------------------------------------------------------- logging
    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        if (state, detail) == self._logged:
            _LOG.debug("telemetry: MQTT broker still %s (%s), attempt %d", state, detail, self.attempts)
            return
        self._logged = (state, detail)
        where = f"{self.broker.host}:{self.broker.port}"
        if state == "connected":
            _LOG.info("telemetry: connected to MQTT broker %s", where)
        elif state == "refused":
            _LOG.warning("telemetry: MQTT broker %s refused the connection (%s); check mqtt_username and the "
                         "password; retrying with backoff, transcription unaffected", where, detail)
        elif state == "unreachable":
            _LOG.warning("telemetry: MQTT broker %s unreachable (%s); retrying with backoff, transcription "
                         "unaffected", where, detail)
        elif state == "lost":
            _LOG.warning("telemetry: lost MQTT broker %s (%s); reconnecting", where, detail)
        elif state == "stopped":
            _LOG.info("telemetry: stopped")
        else:
            _LOG.debug("telemetry: %s %s", state, where)

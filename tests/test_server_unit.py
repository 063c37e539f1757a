"""Server and helpers in-process, with a scripted engine: exact checks of
ordering, cancellation, bounds and cleanup that a real engine makes slow or racy."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

from wyoming_amanuensis import app as app_mod
from wyoming_amanuensis import request as request_mod
from wyoming_amanuensis.cost import EnergyStatus
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.pipeline import TranscriptionError
from wyoming_amanuensis.request import Job, build_prompt
from wyoming_amanuensis.result import Result, Timings
from wyoming_amanuensis.scheduler import Scheduler
from wyoming_amanuensis.server import AmanuensisServer
from wyoming_amanuensis.streaming import Stabilizer
from wyoming_amanuensis.telemetry import RequestEvent

SECOND = 32000  # bytes of 16 kHz mono 16-bit
RATE = 16000


class FakeEngine:
    """Engine stand-in with the real ``run(jobs)`` contract: records jobs; ``gate`` holds
    the worker; text from a script; a request's failure is returned in its place."""

    default_model = "fake"
    encoder_backend = "cpu"

    def __init__(self, text=None, delay: float = 0.0):
        self.calls: list[tuple[Job, float]] = []  # (job, when the worker started it)
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.delay = delay
        self.text = text or (lambda audio, request: f"{len(audio) // RATE} seconds")

    def model_languages(self):
        return {"fake": ["en", "de"], "fake.en": ["en"]}

    def backend_stats(self):
        return None

    def energy_status(self):
        return EnergyStatus(False, reason="a fake engine has no counters")

    def ready(self):
        pass

    def run(self, jobs):
        return [self._one(job) for job in jobs]

    def _one(self, job: Job):
        assert job.audio.dtype == np.float32 and job.audio.ndim == 1
        self.calls.append((job, time.perf_counter()))
        self.started.set()
        self.gate.wait(30)
        time.sleep(self.delay)
        request = job.request
        if "explode" in request.names:
            return TranscriptionError("unsupported-audio", "scripted failure")
        return Result(text=self.text(job.audio, request), language=request.language or "en",
                      timings=Timings(audio_ms=job.audio_ms, total_ms=5), audio_seconds=len(job.audio) / RATE,
                      tokens=3, encoder_backend="cpu", model=request.model or "fake")

    @property
    def finals(self):
        return [j.request for j, _ in self.calls if not j.request.partial]

    @property
    def partials(self):
        return [j.request for j, _ in self.calls if j.request.partial]


class FakeTelemetry:
    def __init__(self):
        self.events = []

    def record(self, event):
        self.events.append(event)


class Harness:
    def __init__(self, engine: FakeEngine, **overrides):
        settings = settings_from(uri="tcp://127.0.0.1:0", **overrides)
        self.engine = engine
        self.telemetry = FakeTelemetry()
        self.server = AmanuensisServer(settings, engine, self.telemetry)

    async def __aenter__(self):
        await self.server.start()
        self.host, self.port = self.server.address
        return self

    async def __aexit__(self, *exc):
        self.engine.gate.set()
        await self.server.stop(timeout=5)

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient(self.host, self.port)

    @property
    def outcomes(self):
        return [e.outcome for e in self.telemetry.events]


async def read(client, timeout=10):
    return await asyncio.wait_for(client.read_event(), timeout)


async def read_types_until(client, last: str, timeout=10):
    events = []
    while True:
        event = await read(client, timeout)
        assert event is not None, [e.type for e in events]
        events.append(event)
        if event.type == last or event.type == "error":
            return events


async def utterance(client, seconds: float, *, stop=True, rate=16000, width=2, channels=1, chunk=0.1, value=1000):
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    frames = int(chunk * rate)
    sample = int(value).to_bytes(2, "little", signed=True) if width == 2 else bytes(width)
    block = sample * channels * frames
    for _ in range(int(round(seconds / chunk))):
        await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=block).event())
    if stop:
        await client.write_event(AudioStop().event())


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------
# helpers

def test_stabilizer_sends_agreed_words_once():
    s = Stabilizer()
    assert s.update("Turn on") == ""
    assert s.update("Turn on the") == "Turn on"
    assert s.update("Turn on the living") == " the"
    assert s.update("Turn off the living room") == ""  # disagrees with what was sent: nothing new
    assert s.update("Turn on the living room") == ""
    assert s.update("Turn on the living room lamp.") == " living room"
    assert s.finish("Turn on the living room lamp.") == " lamp."
    assert s.sent + " lamp." == "Turn on the living room lamp."
    t = Stabilizer()
    t.update("Turn on the")
    t.update("Turn on the lights")
    assert t.finish("Turn off the lights.") == ""  # final revised a sent word: the transcript event corrects
    assert Stabilizer().finish("Hello.") == "Hello."


def test_build_prompt_puts_the_first_names_nearest_the_speech_and_bounds_length():
    assert build_prompt(()) is None
    assert build_prompt(("Ecobee", "Kitchen", "temperature")) == "temperature, Kitchen, Ecobee"
    long = build_prompt(tuple(f"Name {i}" for i in range(400)))
    assert len(long) <= request_mod.MAX_PROMPT_CHARS and long.endswith("Name 0")


# ---------------------------------------------------------------------------
# the server with a scripted engine

async def test_info_and_transcript_extra_fields_and_telemetry():
    engine = FakeEngine()
    async with Harness(engine) as h:
        async with h.client() as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await read(client))
            assert [m.name for m in info.asr[0].models] == ["fake", "fake.en"]
            await client.write_event(Transcribe(name="fake.en", language="en-GB",
                                                transcript_names=["Ecobee"], transcript_terms=["thermostat"]).event())
            await utterance(client, 2.0)
            event = await read(client)
    assert Transcript.from_event(event).text == "2 seconds"
    data = event.data
    assert data["language"] == "en" and data["model"] == "fake.en"
    assert set(data) >= {"text", "language", "timings", "audio_seconds", "realtime_factor", "tokens",
                         "encoder_backend", "encoder_fallback", "model", "request_id"}
    request = engine.finals[0]
    assert request.names == ("Ecobee", "thermostat") and request.language == "en" and request.model == "fake.en"
    assert h.outcomes == ["ok"]
    ev = h.telemetry.events[0]
    assert ev.request_id == data["request_id"] and ev.result.timings.as_dict() == data["timings"]


async def test_busy_when_the_queue_is_full():
    engine = FakeEngine()
    engine.gate.clear()
    async with Harness(engine, queue_depth=1) as h:
        clients = [h.client() for _ in range(3)]
        for c in clients:
            await c.connect()
        await utterance(clients[0], 1.0)
        await asyncio.to_thread(engine.started.wait, 5)  # running
        await utterance(clients[1], 1.0)  # waiting (depth 1)
        await until(lambda: h.server.scheduler.finals_waiting == 1)
        await utterance(clients[2], 1.0)
        event = await read(clients[2])
        error = Error.from_event(event)
        assert error.code == "busy"
        # one waiting, one running, nothing measured yet: 2 x the assumed time per final
        assert event.data["retry_after_s"] == pytest.approx(2 * Scheduler.DEFAULT_PER_FINAL_S)
        assert f"retry after {event.data['retry_after_s']:g} s" in error.text
        await asyncio.sleep(0.2)
        engine.gate.set()
        assert (await read(clients[0])).type == "transcript"
        assert (await read(clients[1])).type == "transcript"
        for c in clients:
            await c.disconnect()
    assert sorted(h.outcomes) == ["busy", "ok", "ok"]
    (first, _), (second, started) = engine.calls
    assert started - second.submitted >= 0.2  # queue time counts from audio-stop, not from dispatch


async def test_vanishing_clients_leave_no_state_no_task_and_no_queued_work():
    """A client gone before its audio-stop is dropped at once; one gone after it sent a whole
    request costs that one request's run (it may only have half-closed: it is answered)."""
    engine = FakeEngine()
    engine.gate.clear()
    async with Harness(engine) as h:
        a = h.client()
        await a.connect()
        await utterance(a, 1.0)  # runs, blocked in the engine
        await asyncio.to_thread(engine.started.wait, 5)
        b, c = h.client(), h.client()
        await b.connect()
        await c.connect()
        await utterance(b, 3.0)  # queued behind a, then b vanishes
        await utterance(c, 2.0, stop=False)  # mid-utterance, then c vanishes
        await until(lambda: h.server.scheduler.finals_waiting == 1 and len(h.server.handlers) == 3)
        await b.disconnect()
        await c.disconnect()
        await until(lambda: len(h.server.handlers) == 2)  # c is gone; b waits for its request
        assert h.server.scheduler.finals_waiting == 1
        engine.gate.set()
        assert (await read(a)).type == "transcript"
        await a.disconnect()
        await until(lambda: not h.server.handlers)
        await until(lambda: h.server.scheduler.idle)
        seconds = [j.audio.size / RATE for j, _ in engine.calls if not j.request.partial]
        assert seconds == [1.0, 3.0]  # a's and b's; c's never ran
        left = [t for t in asyncio.all_tasks() if t.get_name().startswith(("final ", "partial "))]
        assert left == []
    outcomes = sorted(h.outcomes)
    assert outcomes[0] == "disconnected" and outcomes[1:] in (["disconnected", "ok"], ["ok", "ok"]), outcomes


async def test_too_long_audio_is_dropped_as_it_arrives():
    engine = FakeEngine()
    async with Harness(engine, max_utterance_s=2.0) as h:
        async with h.client() as client:
            await utterance(client, 2.5, stop=False)
            error = Error.from_event(await read(client))
            assert error.code == "audio-too-long"
            handler = next(iter(h.server.handlers))
            assert handler._utt.refused and handler._utt.samples == 0 and not handler._utt.chunks
            await client.write_event(AudioStop().event())
            await utterance(client, 1.0)
            assert (await read(client)).data["text"] == "1 seconds"
    assert len(engine.finals) == 1 and h.outcomes == ["audio-too-long", "ok"]


async def test_engine_errors_become_error_events():
    engine = FakeEngine()
    async with Harness(engine) as h:
        async with h.client() as client:
            await client.write_event(Transcribe(transcript_names=["explode"]).event())
            await utterance(client, 1.0)
            error = Error.from_event(await read(client))
            assert error.code == "unsupported-audio" and "scripted" in error.text
            await client.write_event(Transcribe().event())
            await utterance(client, 1.0)
            assert (await read(client)).type == "transcript"


async def test_streaming_order_and_partials_yield_to_finals():
    script = ["Turn", "Turn on", "Turn on the", "Turn on the living", "Turn on the living room"]

    def text(audio, request):
        n = len(audio) // RATE
        return "Turn on the living room lamp." if not request.partial else script[min(n, len(script)) - 1]

    engine = FakeEngine(text=text)
    async with Harness(engine, partial_interval_s=1.0) as h:
        async with h.client() as client:
            request = Transcribe(language="en").event()
            request.data["context"] = {"streaming": True}
            await client.write_event(request)
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            for i in range(5):
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(SECOND)).event())
                await until(lambda: len(engine.partials) == i + 1)
                await until(lambda: not any(t.get_name().startswith("partial") for t in asyncio.all_tasks()))
            await client.write_event(AudioStop().event())
            events = await read_types_until(client, "transcript-stop")
    types = [e.type for e in events]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"]
    chunks = [e.data["text"] for e in events if e.type == "transcript-chunk"]
    assert len(chunks) >= 3 and "".join(chunks) == "Turn on the living room lamp."
    assert len(engine.partials) == 5

    # With finals waiting (someone else's), no partial decode starts.
    engine = FakeEngine(text=text)
    engine.gate.clear()
    async with Harness(engine, partial_interval_s=0.5) as h:
        other = h.client()
        await other.connect()
        await utterance(other, 1.0)
        await asyncio.to_thread(engine.started.wait, 5)
        third = h.client()
        await third.connect()
        await utterance(third, 1.0)  # waits in the queue
        await until(lambda: h.server.scheduler.finals_waiting == 1)
        async with h.client() as client:
            request = Transcribe().event()
            request.data["streaming"] = True
            await client.write_event(request)
            await utterance(client, 3.0, stop=False)
            await asyncio.sleep(0.2)
            assert engine.partials == []
            engine.gate.set()
            await client.write_event(AudioStop().event())
            events = await read_types_until(client, "transcript-stop")
            assert events[-2].data["text"] == "Turn on the living room lamp."
        for c in (other, third):
            assert (await read(c)).type == "transcript"
            await c.disconnect()


async def test_graceful_stop_finishes_in_flight_and_closes_idle():
    engine = FakeEngine(delay=0.3)
    h = Harness(engine)
    await h.__aenter__()
    idle, busy, talking = h.client(), h.client(), h.client()
    for c in (idle, busy, talking):
        await c.connect()
    await idle.write_event(Describe().event())
    await read(idle)
    await utterance(busy, 1.0)
    await utterance(talking, 1.0, stop=False)
    await until(lambda: len(h.server.handlers) == 3 and engine.calls)
    stopping = asyncio.create_task(h.server.stop(timeout=5))
    assert await read(idle) is None  # idle: closed at once
    assert (await read(busy)).type == "transcript"  # in flight: answered
    await asyncio.sleep(0.1)
    await talking.write_event(AudioStop().event())  # mid-utterance: may finish within the timeout
    assert (await read(talking)).type == "transcript"
    await asyncio.wait_for(stopping, 10)
    assert not h.server.handlers
    for c in (idle, busy, talking):
        await c.disconnect()


async def test_graceful_stop_gives_up_after_the_timeout():
    engine = FakeEngine()
    h = Harness(engine)
    await h.__aenter__()
    async with h.client() as talking:
        await utterance(talking, 1.0, stop=False)
        await until(lambda: len(h.server.handlers) == 1)
        t0 = time.monotonic()
        await h.server.stop(timeout=0.5)
        assert time.monotonic() - t0 < 5
        cut = await read(talking)  # told why, before the connection closes
        assert Error.is_type(cut.type) and Error.from_event(cut).code == "shutting-down", cut
        assert await read(talking) is None
    assert not h.server.handlers
    assert h.outcomes == ["shutting-down"]


# ---------------------------------------------------------------------------
# serve(): telemetry wiring, zeroconf

class RecordingTelemetry:
    instances: list["RecordingTelemetry"] = []

    def __init__(self, settings, *, encoder_backend, models, version, backend_stats, energy_status):
        self.args = dict(encoder_backend=encoder_backend(), models=models, version=version)
        self.backend_stats = backend_stats
        self.energy_status = energy_status
        self.calls = []
        self.events = []
        RecordingTelemetry.instances.append(self)

    @property
    def enabled(self):
        return True

    async def start(self):
        self.calls.append("start")

    async def stop(self):
        self.calls.append("stop")

    def record(self, event):
        self.events.append(event)


async def test_serve_runs_telemetry_around_serving_and_records_requests(monkeypatch):
    monkeypatch.setattr(app_mod, "Telemetry", RecordingTelemetry)
    RecordingTelemetry.instances.clear()
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    engine = FakeEngine()
    serving = asyncio.create_task(app_mod.serve(settings_from(uri="tcp://127.0.0.1:0"), engine,
                                                   stop=stop, ready=ready))
    server = await asyncio.wait_for(ready, 10)
    telemetry = RecordingTelemetry.instances[0]
    assert telemetry.calls == ["start"]
    assert telemetry.args == {"encoder_backend": "cpu", "models": ["fake", "fake.en"],
                              "version": app_mod.__version__}
    assert telemetry.backend_stats == engine.backend_stats
    assert telemetry.energy_status == engine.energy_status
    host, port = server.address
    async with AsyncTcpClient(host, port) as client:
        await utterance(client, 1.0)
        transcript = await read(client)
        await client.write_event(AudioStart(rate=16000, width=7, channels=1).event())
        await read(client)
    stop.set()
    await asyncio.wait_for(serving, 10)
    assert telemetry.calls == ["start", "stop"]
    ok, failed = telemetry.events
    assert (ok.outcome, ok.model, ok.request_id) == ("ok", "fake", transcript.data["request_id"])
    assert isinstance(ok, RequestEvent) and ok.result.text == transcript.data["text"]
    assert (failed.outcome, failed.result) == ("unsupported-audio", None)


def test_zeroconf_advertises_a_real_address():
    from wyoming_amanuensis.zeroconf import advertised_host

    assert advertised_host("0.0.0.0") is None and advertised_host("") is None  # detect, never 0.0.0.0
    assert advertised_host("192.168.1.20") == "192.168.1.20"
    assert advertised_host("localhost") == "127.0.0.1"
    with pytest.raises(ValueError):
        advertised_host("fe80::1")


async def test_zeroconf_flag_advertises_the_bound_port_at_the_host_address():
    import zeroconf.asyncio as zeroconf_asyncio  # wyoming[zeroconf] is a dependency: no skip

    from wyoming_amanuensis.zeroconf import advertised_host

    name = f"amanuensis-test-{time.monotonic_ns() % 100000}"
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(app_mod.serve(settings_from(uri="tcp://0.0.0.0:0", zeroconf=name), FakeEngine(),
                                                   stop=stop, ready=ready))
    try:
        server = await asyncio.wait_for(ready, 10)
        port = server.address[1]
        zc = zeroconf_asyncio.AsyncZeroconf()
        try:
            info = await zc.async_get_service_info("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.",
                                                   timeout=3000)
        finally:
            await zc.async_close()
        if info is None:
            pytest.skip("no mDNS here (no interface, or multicast does not loop back)")
        assert info.port == port
        assert info.parsed_addresses() and all(a not in ("0.0.0.0", "127.0.0.1") for a in info.parsed_addresses())
        assert advertised_host("0.0.0.0") is None
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)

"""End to end: the real server (``python -m wyoming_amanuensis``, tiny.en) with
telemetry to a real Mosquitto, real speech from the shared corpus sent with the
wyoming library's client, and what reaches the broker read back with aiomqtt.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import wave
from dataclasses import dataclass

import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event

from benchmarks.corpus import CORPUS_DIR, normalize
from tests.mqtt_broker import MosquittoBroker, Subscriber, wait_until
from wyoming_amanuensis.cost import EnergyMeter
from wyoming_amanuensis.speculation import USED
from wyoming_amanuensis.telemetry.payloads import SENSORS

MODEL_ARGS = ("--model", "tiny.en", "--encoder-backend", "cpu", "--threads", "1")
EVENT_TIMEOUT = 120.0  # generous: two shared cores


@dataclass(frozen=True)
class Clip:
    name: str
    rate: int
    width: int
    channels: int
    pcm: bytes
    reference: str

    @classmethod
    def load(cls, name: str) -> "Clip":
        with wave.open(str(CORPUS_DIR / f"{name}.wav"), "rb") as w:
            pcm = w.readframes(w.getnframes())
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        return cls(name, rate, width, channels, pcm, (CORPUS_DIR / f"{name}.txt").read_text().strip())


LIGHTS = "s2p_gen_turn_on_the_lights"
CLIPS = (LIGHTS, "s2p_gen_next_track", "living_room_light")


async def transcribe(server, clip: Clip) -> Event:
    async with AsyncTcpClient(server.host, server.port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=clip.rate, width=clip.width, channels=clip.channels).event())
        step = 1024 * clip.width * clip.channels
        for i in range(0, len(clip.pcm), step):
            await client.write_event(AudioChunk(rate=clip.rate, width=clip.width, channels=clip.channels,
                                                audio=clip.pcm[i:i + step]).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)
            assert event is not None, "connection closed before the transcript"
            if Transcript.is_type(event.type):
                return event
            assert event.type != "error", event.data


def mqtt_args(broker: MosquittoBroker, *extra: str) -> tuple:
    return ("--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--instance", "e2e", *extra)


def telemetry_lines(server) -> list[str]:
    return [line for line in server.log().splitlines() if "telemetry:" in line]


@pytest.fixture
def broker(tmp_path):
    b = MosquittoBroker(tmp_path / "broker").start()
    yield b
    b.kill()


async def wait_online(broker: MosquittoBroker, timeout: float = 30.0, **client_kw) -> None:
    async with Subscriber(broker, "amanuensis/e2e/status", **client_kw) as sub:
        await sub.wait_for(lambda s: [m for m in s.messages if m.payload == b"online"], timeout=timeout,
                           what="the server's online status")


async def status_becomes(broker: MosquittoBroker, payload: bytes):
    """The status message once it says ``payload`` (retained, or live if it comes later)."""
    async with Subscriber(broker, "amanuensis/e2e/status") as sub:
        await sub.wait_for(lambda s: s.messages and s.messages[-1].payload == payload, what=f"status {payload!r}")
    return sub.messages[-1]


async def test_transcript_timings_equal_the_mqtt_message_and_sigterm_says_offline(broker, server_factory):
    server = server_factory(mqtt_args(broker), model_args=MODEL_ARGS)
    await wait_online(broker)
    clip = Clip.load(LIGHTS)
    async with Subscriber(broker, "amanuensis/e2e/request", "amanuensis/e2e/stats", "homeassistant/#") as sub:
        transcript = await transcribe(server, clip)
        request_id = transcript.data["request_id"]
        [message] = await sub.wait_for(
            lambda s: [p for p in s.json_on("amanuensis/e2e/request") if p["request_id"] == request_id],
            what="the request's message")
        stats = await sub.wait_for(lambda s: [p for p in s.json_on("amanuensis/e2e/stats") if p["requests"] == 1],
                                   what="stats counting the request")
    assert normalize(transcript.data["text"]) == normalize(clip.reference)
    for key in ("timings", "audio_seconds", "realtime_factor", "tokens", "encoder_backend", "encoder_fallback",
                "model", "language"):
        assert message[key] == transcript.data[key], key
    assert set(message["timings"]) >= {"audio_ms", "mel_ms", "encoder_ms", "decoder_ms", "alignment_ms", "total_ms"}
    assert message["timings"]["total_ms"] > 0 and message["tokens"] > 0
    assert (message["outcome"], message["model"], message["encoder_backend"]) == ("ok", "tiny.en", "cpu")
    assert message["queue_ms"] == transcript.data["timings"]["queue_ms"]
    assert message["latency_ms"] == pytest.approx(transcript.data["timings"]["total_ms"] + message["queue_ms"])
    assert "text" not in message
    assert stats[-1]["latency_ms"]["last"] == pytest.approx(message["latency_ms"])
    # How the answer came: the same figures as the transcript's, counted in the stats.
    assert message["answer_ms"] == transcript.data["answer_ms"] == stats[-1]["answer_ms"]["last"]
    outcome = transcript.data["speculation"]["outcome"]
    assert message["speculation"] == outcome and stats[-1]["speculation"][outcome] == 1
    assert stats[-1]["speculation"]["hit_rate_pct"] == (100.0 if outcome in USED else 0.0)
    # What the command cost, in its timings and in the stats; this host's energy counters are
    # unreadable or absent (said in the stats and the log), so no energy sensor is declared.
    cost = message["timings"]
    assert cost == transcript.data["timings"]
    assert 0 < cost["cpu_s"] <= (cost["total_ms"] - cost["audio_ms"]) / 1000 * os.cpu_count() + 0.001
    assert stats[-1]["cpu_s_per_command"]["last"] == pytest.approx(cost["cpu_s"], abs=1e-3)
    assert stats[-1]["cpu_s_per_command"]["mean"] == pytest.approx(cost["cpu_s"], abs=1e-3)
    assert stats[-1]["process_cpu_s"] >= cost["cpu_s"]
    meter = EnergyMeter.detect().status
    assert stats[-1]["energy_meter"] == meter.as_dict()
    assert sum(meter.describe() in line for line in server.log().splitlines()) == 1
    declared = [s for s in SENSORS if meter.available or not s.needs_energy]
    if not meter.available:
        assert cost["energy_j"] is None and stats[-1]["energy_j_per_command"]["last"] is None
        assert stats[-1]["energy_j_total"] is None
    configs = [m for m in sub.on("homeassistant/#") if m.payload]
    assert len(configs) == len(declared) and all(m.retain for m in configs)
    assert {json.loads(m.payload)["unique_id"].split("amanuensis_e2e_")[1] for m in configs} == \
        {s.object_id for s in declared}

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert (await status_becomes(broker, b"offline")).retain  # published before exit, so already retained


async def test_broker_killed_and_restarted_while_clients_transcribe(broker, server_factory):
    server = server_factory(mqtt_args(broker), model_args=MODEL_ARGS)
    await wait_online(broker)
    clips = [Clip.load(name) for name in CLIPS]
    done: list[tuple[Clip, Event]] = []
    keep_going = True

    async def client_loop(offset: int) -> None:
        i = offset
        while keep_going:
            clip = clips[i % len(clips)]
            done.append((clip, await transcribe(server, clip)))
            i += 1

    clients = [asyncio.create_task(client_loop(n)) for n in range(2)]
    try:
        await wait_until(lambda: len(done) >= 2, timeout=60, what="transcripts before the outage")
        broker.kill()
        # The outage lasts past a failed reconnect, and clients are served all along.
        await wait_until(lambda: any("unreachable" in line for line in telemetry_lines(server)), timeout=30,
                         what="a failed reconnect")
        during = len(done)
        await wait_until(lambda: len(done) >= during + 3, timeout=60, what="transcripts while the broker is down")
        broker.start()
        async with Subscriber(broker, "amanuensis/e2e/request", "amanuensis/e2e/status") as sub:
            after = len(done)
            await wait_until(lambda: len(done) >= after + 3, timeout=60, what="transcripts after the restart")
            expected = {event.data["request_id"] for _, event in done[after:]}
            await sub.wait_for(lambda s: expected <= {p["request_id"] for p in s.json_on("amanuensis/e2e/request")},
                               timeout=30, what="messages for the requests after the restart")
            await sub.wait_for(lambda s: [m for m in s.on("amanuensis/e2e/status") if m.payload == b"online"],
                               what="online re-announced to the restarted broker")
    finally:
        keep_going = False
        results = await asyncio.gather(*clients, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    # Every request got its transcript, outage or not.
    assert all(normalize(event.data["text"]) == normalize(clip.reference) for clip, event in done)
    lines = telemetry_lines(server)
    assert sum("lost MQTT broker" in line for line in lines) == 1, lines
    assert sum("connected to MQTT broker" in line for line in lines) == 2, lines

    server.proc.kill()  # no clean disconnect: the broker publishes the last will
    server.proc.wait(10)
    await status_becomes(broker, b"offline")


async def test_wrong_credentials_are_logged_once_and_the_server_still_serves(tmp_path, server_factory):
    broker = MosquittoBroker(tmp_path / "auth", users={"amanuensis": "s3cret"}).start()
    try:
        server = server_factory(mqtt_args(broker, "--mqtt-username", "amanuensis", "--mqtt-password", "wr0ng-pa55"),
                                model_args=MODEL_ARGS)
        clip = Clip.load(LIGHTS)
        for _ in range(2):
            transcript = await transcribe(server, clip)
            assert normalize(transcript.data["text"]) == normalize(clip.reference)
        # Several refused attempts at the broker, one line in the server's log.
        await wait_until(lambda: broker.log().count("not authorised") >= 3, timeout=30, what="three refusals")
        refused = [line for line in telemetry_lines(server) if "refused" in line]
        assert len(refused) == 1, telemetry_lines(server)
        assert "wr0ng-pa55" not in server.log()
        assert server.stop() == 0  # SIGTERM with the broker still refusing: a clean, bounded exit
    finally:
        broker.kill()

"""Telemetry against a real Mosquitto broker, driven directly with real Results.

Each broker test gets its own broker process on a free port (tests/mqtt_broker.py);
what the telemetry published is read back with a plain aiomqtt subscriber.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import jinja2
import pytest

from tests.mqtt_broker import MosquittoBroker, Subscriber, free_port, make_tls_files, wait_until
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.cost import EnergyStatus
from wyoming_amanuensis.result import Result, Timings
from wyoming_amanuensis.telemetry import RequestEvent, Telemetry
from wyoming_amanuensis.telemetry import publisher as publisher_module
from wyoming_amanuensis.telemetry.payloads import SENSORS, discovery_configs, request_payload, stats_payload, \
    topics_for
from wyoming_amanuensis.telemetry.stats import RollingStats, percentile

REPO = Path(__file__).resolve().parents[1]
NO_ENERGY = EnergyStatus(False, reason="no RAPL package counters on this host")
RAPL = EnergyStatus(True, source="powercap RAPL (package-0)")


def make_result(total_ms: float = 370.75, **kw) -> Result:
    timings = Timings(audio_ms=1.25, mel_ms=3.5, encoder_ms=210.125, decoder_ms=150.0, alignment_ms=0.0,
                      total_ms=total_ms, queue_ms=12.5, cpu_s=0.4125)
    return Result(text="turn on the lights", language="en", timings=timings, audio_seconds=1.8, tokens=7,
                  encoder_backend="cpu", model="tiny.en", **kw)


def ok_event(request_id: str = "req-1", result: Result | None = None) -> RequestEvent:
    result = result or make_result()
    return RequestEvent(request_id=request_id, model=result.model, language=result.language, outcome="ok",
                        result=result)


def settings_for(broker_port: int, **kw):
    base = dict(mqtt_host="127.0.0.1", mqtt_port=broker_port, instance="test-box")
    return settings_from(**{**base, **kw})


@pytest.fixture
def broker(tmp_path):
    b = MosquittoBroker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
async def make_telemetry():
    started: list[Telemetry] = []

    async def make(settings, start: bool = True, energy: EnergyStatus = NO_ENERGY) -> Telemetry:
        telemetry = Telemetry(settings, encoder_backend=lambda: "cpu", models=["tiny.en"], version="9.9.9",
                              energy_status=lambda: energy)
        if start:
            await telemetry.start()
        started.append(telemetry)
        return telemetry

    yield make
    for telemetry in started:
        await telemetry.stop()


async def online(broker: MosquittoBroker, telemetry: Telemetry, **client_kw) -> None:
    """Wait until the telemetry has announced itself (discovery and status are then at the broker)."""
    async with Subscriber(broker, telemetry.topics.status, **client_kw) as sub:
        await sub.wait_for(lambda s: [m for m in s.on(telemetry.topics.status) if m.payload == b"online"],
                           what="online status")


# ---------------------------------------------------------------------------
# payloads and stats: pure functions

def test_request_payload_of_a_failed_request_has_the_code_and_no_timings():
    event = RequestEvent(request_id="r9", model="base", language=None, outcome="audio-too-long")
    payload = request_payload(event, include_text=True, default_backend="cpu")
    assert payload["outcome"] == "audio-too-long"
    assert payload["timings"] is None and payload["latency_ms"] is None and payload["tokens"] is None
    assert payload["queue_ms"] is None  # queue time is part of the timings a failed request does not have
    assert payload["encoder_backend"] == "cpu"  # the server's backend when the request never reached one
    assert payload["text"] is None


def test_latency_is_the_sum_of_the_published_queue_and_total():
    result = make_result(total_ms=69.7584)
    result.timings.queue_ms = 0.0004  # each rounds down, their raw sum rounds up
    payload = request_payload(ok_event(result=result), include_text=False, default_backend="cpu")
    assert payload["latency_ms"] == payload["queue_ms"] + payload["timings"]["total_ms"] == 69.758


def test_answer_latency_and_speculation_outcomes_reach_the_stats():
    now = [1000.0]
    stats = RollingStats(window_s=60.0, clock=lambda: now[0])
    for answer_ms, outcome in ((2.0, "hit"), (4.0, "hit"), (150.0, "joined"), (300.0, "miss")):
        stats.add("ok", 100.0, 0.5, answer_ms=answer_ms, speculation=outcome)
    stats.add("busy")
    snap = stats.snapshot()
    assert (snap.last_answer_ms, snap.p50_answer_ms) == (300.0, 77.0)
    payload = stats_payload(snap, encoder_backend="cpu", models=["base"], version="1", dropped=0, energy=NO_ENERGY)
    assert payload["answer_ms"] == {"last": 300.0, "p50": 77.0, "p95": pytest.approx(277.5)}
    assert payload["speculation"] == {"hit": 2, "joined": 1, "promoted": 0, "miss": 1, "none": 0, "hit_rate_pct": 75.0}
    event = RequestEvent(request_id="r", model="base", language="en", outcome="ok", result=make_result(),
                         answer_ms=1.23456, speculation="hit")
    sent = request_payload(event, include_text=False, default_backend="cpu")
    assert (sent["answer_ms"], sent["speculation"]) == (1.235, "hit")
    empty = stats_payload(RollingStats().snapshot(), encoder_backend="cpu", models=[], version="1", dropped=0,
                          energy=NO_ENERGY)
    assert empty["speculation"]["hit_rate_pct"] is None and empty["answer_ms"]["p50"] is None


def test_transcript_text_only_when_configured():
    event = ok_event()
    assert "text" not in request_payload(event, include_text=False, default_backend="cpu")
    assert request_payload(event, include_text=True, default_backend="cpu")["text"] == "turn on the lights"


def test_percentiles_interpolate_like_numpy():
    values = sorted([10.0, 20.0, 30.0, 40.0, 1000.0])
    assert percentile(values, 50) == 30.0
    assert percentile(values, 95) == pytest.approx(40.0 + 0.8 * 960.0)
    assert percentile([5.0], 95) == 5.0
    assert percentile([], 50) is None


def test_rolling_window_forgets_old_samples_but_keeps_totals():
    now = [1000.0]
    stats = RollingStats(window_s=60.0, clock=lambda: now[0])
    stats.add("ok", 100.0, 0.5, fallback=True)
    now[0] += 30
    stats.add("ok", 300.0, 0.25, npu_ms=150.0)
    stats.add("busy")
    snap = stats.snapshot()
    assert (snap.requests, snap.errors, snap.errors_by_code, snap.encoder_fallbacks) == (3, 1, {"busy": 1}, 1)
    assert (snap.window_samples, snap.p50_latency_ms, snap.last_latency_ms) == (2, 200.0, 300.0)
    assert snap.mean_realtime_factor == pytest.approx(0.375)
    assert snap.npu_busy_share == pytest.approx(150.0 / 30_000.0)  # only 30 s of uptime so far
    now[0] += 45  # the first sample is now 75 s old
    snap = stats.snapshot()
    assert (snap.window_samples, snap.p95_latency_ms, snap.requests) == (1, 300.0, 3)
    assert snap.rss_bytes and snap.rss_bytes > 10_000_000  # any CPython process is bigger than 10 MB


def test_cost_per_command_reaches_the_stats():
    now = [1000.0]
    stats = RollingStats(window_s=60.0, clock=lambda: now[0])
    for cpu_s, energy_j in ((0.2, 3.0), (0.4, 5.0), (0.9, 10.0)):
        stats.add("ok", 100.0, 0.5, cpu_s=cpu_s, energy_j=energy_j)
    stats.add("busy")  # no result: costs nothing that is counted
    measured = stats_payload(stats.snapshot(), encoder_backend="cpu", models=["base"], version="1", dropped=0,
                             energy=RAPL)
    assert measured["cpu_s_per_command"] == {"last": 0.9, "p50": 0.4, "mean": 0.5}
    assert measured["energy_j_per_command"] == {"last": 10.0, "p50": 5.0, "mean": 6.0}
    assert measured["energy_j_total"] == 18.0
    assert measured["energy_meter"] == {"available": True, "source": "powercap RAPL (package-0)", "reason": None}
    assert measured["process_cpu_s"] > 0
    now[0] += 120  # the window forgets the samples, the total does not
    later = stats_payload(stats.snapshot(), encoder_backend="cpu", models=["base"], version="1", dropped=0,
                          energy=RAPL)
    assert later["energy_j_per_command"]["mean"] is None and later["energy_j_total"] == 18.0

    unmeasured = RollingStats()
    unmeasured.add("ok", 100.0, 0.5, cpu_s=0.3, energy_j=None)
    payload = stats_payload(unmeasured.snapshot(), encoder_backend="cpu", models=["base"], version="1", dropped=0,
                            energy=NO_ENERGY)
    assert payload["cpu_s_per_command"]["mean"] == 0.3
    assert payload["energy_j_per_command"] == {"last": None, "p50": None, "mean": None}  # unknown, not 0
    assert payload["energy_j_total"] is None
    assert payload["energy_meter"]["available"] is False and "no RAPL" in payload["energy_meter"]["reason"]


def test_discovery_declares_energy_sensors_only_where_counters_are_read():
    topics = topics_for(settings_from(instance="box"))
    energy_ids = {s.object_id for s in SENSORS if s.needs_energy}
    assert energy_ids == {"energy_per_command", "energy_total"}
    without = dict(discovery_configs(topics, version="1", models=["base"], energy_available=False))
    assert {t.split("/")[-2] for t, c in without.items() if c is None} == energy_ids  # removed, if declared before
    cpu = without["homeassistant/sensor/amanuensis_box/cpu_per_command/config"]
    assert (cpu["unit_of_measurement"], cpu["device_class"], cpu["state_class"]) == ("s", "duration", "measurement")
    with_energy = {t.split("/")[-2]: c for t, c in
                   discovery_configs(topics, version="1", models=["base"], energy_available=True)}
    per_command, total = with_energy["energy_per_command"], with_energy["energy_total"]
    # Home Assistant 2025.4 allows device_class energy only with state_class total/total_increasing.
    assert (per_command["unit_of_measurement"], per_command["state_class"]) == ("J", "measurement")
    assert "device_class" not in per_command
    assert (total["unit_of_measurement"], total["device_class"], total["state_class"]) == \
        ("J", "energy", "total_increasing")


async def test_disabled_without_a_broker_and_every_call_is_a_no_op():
    telemetry = Telemetry(settings_from(), encoder_backend=lambda: "cpu", models=["tiny.en"], version="1")
    assert not telemetry.enabled
    await telemetry.start()
    telemetry.record(ok_event())
    await telemetry.stop()
    assert telemetry.stats_snapshot()["requests"] == 0


def test_stats_name_the_backend_the_engine_chose_once_it_has():
    chosen = ["auto"]  # --encoder-backend auto, the engine still loading
    telemetry = Telemetry(settings_from(), encoder_backend=lambda: chosen[0], models=["base"], version="1")
    assert telemetry.stats_snapshot()["encoder_backend"] == "auto"
    chosen[0] = "cpu"  # loaded
    assert telemetry.stats_snapshot()["encoder_backend"] == "cpu"


def test_stats_carry_the_encoder_backends_own_counters_and_the_fallbacks():
    npu = {"precision": "bf16x3", "requests": 4, "fallbacks": 1, "disabled": False, "disabled_reason": None}
    telemetry = Telemetry(settings_for(free_port()), encoder_backend=lambda: "npu", models=["base"], version="1",
                          backend_stats=lambda: dict(npu))
    telemetry.record(ok_event("a", make_result(encoder_fallback=True)))
    telemetry.record(ok_event("b"))
    stats = telemetry.stats_snapshot()
    assert stats["npu"] == npu and stats["encoder_fallbacks"] == 1 and stats["requests"] == 2
    npu["disabled"] = True  # read at every snapshot: a backend given up on shows at once
    assert telemetry.stats_snapshot()["npu"]["disabled"] is True
    plain = Telemetry(settings_from(), encoder_backend=lambda: "cpu", models=["base"], version="1")
    assert plain.stats_snapshot()["npu"] is None


async def test_record_never_raises(caplog, make_telemetry):
    telemetry = await make_telemetry(settings_for(free_port()), start=False)
    with caplog.at_level(logging.ERROR, logger="wyoming_amanuensis.telemetry"):
        telemetry.record(object())  # type: ignore[arg-type] - what a caller bug would pass
        telemetry.record(object())  # type: ignore[arg-type]
    assert len([r for r in caplog.records if "could not record" in r.getMessage()]) == 1
    telemetry.record(ok_event())
    assert telemetry.stats_snapshot()["requests"] == 1


# ---------------------------------------------------------------------------
# against a real broker

async def test_request_message_fields_equal_the_results(broker, make_telemetry):
    telemetry = await make_telemetry(settings_for(broker.port))
    result = make_result()
    async with Subscriber(broker, telemetry.topics.request) as sub:
        telemetry.record(ok_event("req-1", result))
        [message] = await sub.wait_for(lambda s: s.json_on(telemetry.topics.request), what="request message")
    assert sub.messages[0].topic.value == "amanuensis/test-box/request"
    assert not sub.messages[0].retain
    # The server puts result.as_dict() on the transcript event: the shared fields must match exactly.
    transcript_fields = result.as_dict()
    for key in ("timings", "audio_seconds", "realtime_factor", "tokens", "encoder_backend", "encoder_fallback",
                "model", "language"):
        assert message[key] == transcript_fields[key], key
    assert message["timings"] == {"audio_ms": 1.25, "mel_ms": 3.5, "encoder_ms": 210.125, "decoder_ms": 150.0,
                                  "alignment_ms": 0.0, "names_ms": 0.0, "total_ms": 370.75, "queue_ms": 12.5, "npu_ms": 0.0,
                                  "cpu_s": 0.412, "energy_j": None}
    assert message["request_id"] == "req-1" and message["outcome"] == "ok"
    assert message["queue_ms"] == 12.5 and message["latency_ms"] == 383.25
    assert "text" not in message  # privacy default


async def test_discovery_configs_are_retained_and_wired_to_the_status_topic(broker, make_telemetry):
    telemetry = await make_telemetry(settings_for(broker.port), energy=RAPL)
    await online(broker, telemetry)
    measured = make_result()
    measured.timings.energy_j = 2.5
    telemetry.record(ok_event("a", measured))
    telemetry.record(RequestEvent("b", "tiny.en", "en", "busy"))
    # A client arriving later (Home Assistant after a restart) gets everything retained.
    async with Subscriber(broker, "homeassistant/#", telemetry.topics.status, telemetry.topics.stats) as sub:
        await sub.wait_for(lambda s: len(s.on("homeassistant/#")) == len(SENSORS) and s.on(telemetry.topics.stats),
                           what="discovery configs and stats")
        stats = await sub.wait_for(lambda s: [p for p in s.json_on(telemetry.topics.stats) if p["requests"] == 2],
                                   what="stats counting both requests")
    configs = {m.topic.value: m for m in sub.on("homeassistant/#")}
    assert all(m.retain for m in configs.values())
    assert [m.payload for m in sub.on(telemetry.topics.status)] == [b"online"]
    parsed = {topic: json.loads(m.payload) for topic, m in configs.items()}
    assert set(parsed) == {f"homeassistant/sensor/amanuensis_test-box/{s.object_id}/config" for s in SENSORS}
    devices = [c["device"] for c in parsed.values()]
    assert all(d == devices[0] for d in devices) and devices[0]["name"] == "Amanuensis"
    assert devices[0]["sw_version"] == "9.9.9" and devices[0]["identifiers"] == ["amanuensis_test-box"]
    assert len({c["unique_id"] for c in parsed.values()}) == len(SENSORS)
    by_id = {topic.split("/")[-2]: c for topic, c in parsed.items()}
    for config in by_id.values():
        assert config["availability_topic"] == telemetry.topics.status
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["state_topic"] == telemetry.topics.stats
    for latency in ("last_latency", "p95_latency"):
        assert (by_id[latency]["unit_of_measurement"], by_id[latency]["device_class"],
                by_id[latency]["state_class"]) == ("ms", "duration", "measurement")
    assert by_id["requests"]["state_class"] == by_id["errors"]["state_class"] == "total_increasing"
    assert by_id["realtime_factor"]["state_class"] == "measurement"

    # Each value_template renders the right value from the real stats payload
    # (plain Jinja2: Home Assistant adds filters, not syntax).
    def render(object_id: str) -> str:
        return jinja2.Environment().from_string(by_id[object_id]["value_template"]).render(value_json=stats[-1])

    assert float(render("last_latency")) == 383.25  # the failed request after it has no latency to show
    assert float(render("p95_latency")) == 383.25
    assert float(render("realtime_factor")) == pytest.approx(round(make_result().realtime_factor, 4))
    assert (render("requests"), render("errors"), render("backend")) == ("2", "1", "cpu")
    assert render("encoder_fallbacks") == "0"
    assert float(render("cpu_per_command")) == 0.4125
    assert (float(render("energy_per_command")), float(render("energy_total"))) == (2.5, 2.5)


async def test_a_restart_without_energy_counters_removes_the_energy_sensors(broker, make_telemetry):
    first = await make_telemetry(settings_for(broker.port), energy=RAPL)
    await online(broker, first)
    await first.stop()
    energy_topics = {first.topics.discovery(s.object_id) for s in SENSORS if s.needs_energy}
    second = await make_telemetry(settings_for(broker.port))  # e.g. the counters became root-only
    await online(broker, second)
    # What Home Assistant reads after that: the retained configs, without the energy sensors.
    async with Subscriber(broker, "homeassistant/#") as sub:
        await sub.wait_for(lambda s: len(s.on("homeassistant/#")) == len(SENSORS) - len(energy_topics),
                           what="the remaining discovery configs")
        await asyncio.sleep(0.5)
    assert not energy_topics & {m.topic.value for m in sub.on("homeassistant/#")}
    stats = second.stats_snapshot()
    assert stats["energy_meter"]["available"] is False and stats["energy_j_total"] is None


async def test_online_then_retained_offline_on_clean_stop(broker, make_telemetry):
    telemetry = await make_telemetry(settings_for(broker.port))
    await online(broker, telemetry)
    t0 = time.monotonic()
    await telemetry.stop()
    assert time.monotonic() - t0 < publisher_module.STOP_TIMEOUT_S
    async with Subscriber(broker, telemetry.topics.status) as sub:
        [message] = await sub.wait_for(lambda s: s.on(telemetry.topics.status), what="retained status")
    assert (message.payload, message.retain) == (b"offline", True)
    assert "disconnected." in broker.log()  # a clean DISCONNECT, not a dropped socket


KILLABLE = """
import asyncio, sys
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.telemetry import Telemetry

async def main():
    settings = settings_from(mqtt_host="127.0.0.1", mqtt_port=int(sys.argv[1]), instance="doomed")
    telemetry = Telemetry(settings, encoder_backend=lambda: "cpu", models=["tiny.en"], version="1")
    await telemetry.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_last_will_says_offline_when_the_process_is_killed(broker):
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(broker.port)], cwd=REPO)
    try:
        async with Subscriber(broker, "amanuensis/doomed/status") as sub:
            await sub.wait_for(lambda s: [m for m in s.messages if m.payload == b"online"], timeout=30,
                               what="online from the subprocess")
            proc.kill()
            proc.wait(10)
            await sub.wait_for(lambda s: s.messages[-1].payload == b"offline", what="the last will")
    finally:
        if proc.poll() is None:
            proc.kill()
    async with Subscriber(broker, "amanuensis/doomed/status") as later:
        [message] = await later.wait_for(lambda s: s.messages, what="retained will")
    assert (message.payload, message.retain) == (b"offline", True)


async def test_broker_killed_and_restarted_publishing_resumes(broker, make_telemetry, monkeypatch, caplog):
    # The first retry after an outage must come well after the test's subscriber is back.
    monkeypatch.setattr(publisher_module, "BACKOFF_INITIAL_S", 1.0)
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.telemetry")
    telemetry = await make_telemetry(settings_for(broker.port))
    await online(broker, telemetry)
    broker.kill()
    await wait_until(lambda: telemetry.publisher.state == "unreachable", what="a failed reconnect")
    t0 = time.perf_counter()
    for i in range(5):
        telemetry.record(ok_event(f"during-outage-{i}"))
    assert time.perf_counter() - t0 < 0.5  # recording does not wait for the broker (that takes seconds)
    broker.start()
    async with Subscriber(broker, telemetry.topics.request, telemetry.topics.status) as sub:
        assert telemetry.publisher.connections == 1, "telemetry reconnected before the subscriber was ready"
        await sub.wait_for(lambda s: len(s.on(telemetry.topics.request)) == 5, what="queued requests")
        telemetry.record(ok_event("after"))
        await sub.wait_for(lambda s: len(s.on(telemetry.topics.request)) == 6, what="a fresh request")
    ids = [p["request_id"] for p in sub.json_on(telemetry.topics.request)]
    assert ids == [f"during-outage-{i}" for i in range(5)] + ["after"]
    assert b"online" in [m.payload for m in sub.on(telemetry.topics.status)]  # re-announced to the new broker
    assert telemetry.publisher.connections == 2
    states = [r.getMessage() for r in caplog.records if r.name.endswith("publisher")]
    assert sum("lost MQTT broker" in s for s in states) == 1
    assert sum("unreachable" in s for s in states) == 1
    assert sum("connected to MQTT broker" in s for s in states) == 2


async def test_broker_down_at_start_queue_keeps_the_newest(tmp_path, make_telemetry, monkeypatch):
    monkeypatch.setattr(publisher_module, "BACKOFF_INITIAL_S", 1.5)
    broker = MosquittoBroker(tmp_path / "late")  # configured, not started yet
    telemetry = await make_telemetry(settings_for(broker.port, mqtt_queue_size=5))
    await wait_until(lambda: telemetry.publisher.state == "unreachable", what="first attempt to fail")
    t0 = time.perf_counter()
    for i in range(1000):
        telemetry.record(ok_event(f"r{i}"))
    assert time.perf_counter() - t0 < 2.0  # ~1000 JSON encodes (~50 ms); no waiting on anything
    assert telemetry.publisher.dropped == 995 and telemetry.publisher.pending() == 5
    assert telemetry.stats_snapshot()["telemetry_dropped"] == 995
    broker.start()
    try:
        async with Subscriber(broker, telemetry.topics.request) as sub:
            assert telemetry.publisher.connections == 0, "telemetry connected before the subscriber was ready"
            await sub.wait_for(lambda s: len(s.messages) == 5, timeout=15, what="the queued newest five")
        assert [p["request_id"] for p in sub.json_on(telemetry.topics.request)] == [f"r{i}" for i in range(995, 1000)]
    finally:
        broker.kill()


async def test_wrong_credentials_logged_once_then_a_fixed_password_file_is_picked_up(tmp_path, make_telemetry,
                                                                                      caplog):
    broker = MosquittoBroker(tmp_path / "auth", users={"amanuensis": "s3cret"}).start()
    password_file = tmp_path / "mqtt_password"
    password_file.write_text("wrong\n")
    try:
        caplog.set_level(logging.DEBUG, logger="wyoming_amanuensis.telemetry")
        telemetry = await make_telemetry(settings_for(broker.port, mqtt_username="amanuensis",
                                                      mqtt_password_file=str(password_file)))
        await wait_until(lambda: telemetry.publisher.attempts >= 3, what="three refused attempts")
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "refused" in warnings[0].getMessage(), warnings
        assert telemetry.publisher.state == "refused"
        telemetry.record(ok_event())  # still accepted, queued
        password_file.write_text("s3cret\n")  # read again on every attempt
        await wait_until(lambda: telemetry.publisher.state == "connected", timeout=15, what="reconnect")
        await online(broker, telemetry, username="amanuensis", password="s3cret")
    finally:
        broker.kill()


async def test_tls_with_a_client_certificate(tmp_path, make_telemetry, caplog):
    files = make_tls_files(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "tls", tls=files).start()
    tls_kw = dict(mqtt_tls=True, mqtt_ca_file=str(files.ca), mqtt_cert_file=str(files.client_cert),
                  mqtt_key_file=str(files.client_key))
    try:
        telemetry = await make_telemetry(settings_for(broker.port, **tls_kw))
        await online(broker, telemetry, tls_params=aiomqtt.TLSParameters(
            ca_certs=str(files.ca), certfile=str(files.client_cert), keyfile=str(files.client_key)))
        # Without the client certificate the broker rejects the handshake: one warning, no
        # errors (paho's own per-attempt ERROR lines are demoted), nothing raised.
        caplog.set_level(logging.INFO, logger="wyoming_amanuensis.telemetry")
        no_cert = await make_telemetry(settings_for(broker.port, mqtt_tls=True, mqtt_ca_file=str(files.ca),
                                                    mqtt_client_id="no-cert"))
        await wait_until(lambda: no_cert.publisher.state == "unreachable", timeout=15, what="rejected handshake")
        assert no_cert.publisher.connections == 0
        assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == ["WARNING"]
    finally:
        broker.kill()


async def test_stop_without_a_broker_is_quick(make_telemetry):
    telemetry = await make_telemetry(settings_for(free_port()))
    telemetry.record(ok_event())
    await wait_until(lambda: telemetry.publisher.attempts >= 1 and telemetry.publisher.state == "unreachable")
    t0 = time.monotonic()
    await telemetry.stop()
    assert time.monotonic() - t0 < 1.0
    assert telemetry.publisher.state == "stopped"

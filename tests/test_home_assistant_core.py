"""A real Home Assistant core (2025.4.4, ``home_assistant_core`` in tests/home_assistant_core.py)
as the client: its Wyoming integration added over the config-flow API, pointed at our
server (the shared ``amanuensis_server``: tiny.en by default, real model), an assist
pipeline with that STT entity, and pipeline runs fed corpus speech over the websocket, as
a voice satellite or the browser would. The words Home Assistant reports must be the
clip's.

The first run installs Home Assistant into a cached venv (2-3 minutes here); after that the
module takes about 20 s (Home Assistant starts in about 10 s).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soundfile as sf

from benchmarks.corpus import CORPUS_DIR, normalize
from tests.home_assistant_core import HomeAssistantCore, HomeAssistantWebSocket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]  # a cold cache installs Home Assistant first

RATE = 16000
CHUNK_BYTES = 320  # 10 ms of 16 kHz 16-bit mono, what Home Assistant's own pipeline chunks are
TRAILING_SILENCE_S = 1.2  # more than Home Assistant's default 0.7 s, so its VAD ends the command
# Commands tiny.en (the shared server's default model, what Home Assistant gets: it sends no name)
# transcribes word for word (see tests/test_server.py).
CLIPS = ("living_room_light", "s2p_rec_lock_the_front_door", "s2p_gen_turn_off_the_tv_in_the_office")


def pcm16k(name: str) -> bytes:
    """The clip as 16 kHz mono 16-bit PCM followed by silence."""
    path = CORPUS_DIR / f"{name}.wav"
    info = sf.info(str(path))
    if (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16"):
        samples, _ = sf.read(str(path), dtype="int16")
    else:
        from wyoming_amanuensis.audio import to_16k

        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        mono, _ = to_16k(audio.mean(axis=1), rate)
        samples = (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2")
    return samples.astype("<i2").tobytes() + bytes(2 * int(TRAILING_SILENCE_S * RATE))


def run_stt(ws: HomeAssistantWebSocket, pipeline_id: str, pcm: bytes, timeout: float = 120.0) -> list[dict]:
    """One ``assist_pipeline/run`` from stt to stt: audio as binary messages, then the empty one.
    Returns the run's events up to run-end (or an error)."""
    msg_id = ws.send_command("assist_pipeline/run", start_stage="stt", end_stage="stt", pipeline=pipeline_id,
                             input={"sample_rate": RATE}, timeout=timeout)
    ws.result(msg_id)
    events: list[dict] = []

    def next_event() -> dict:
        while True:
            message = ws.receive(timeout)
            if message.get("id") == msg_id and message.get("type") == "event":
                events.append(message["event"])
                return message["event"]

    while (event := next_event())["type"] not in ("run-start", "error"):
        pass
    if event["type"] == "error":
        return events
    prefix = bytes([event["data"]["runner_data"]["stt_binary_handler_id"]])
    for i in range(0, len(pcm), CHUNK_BYTES):
        ws.send_binary(prefix + pcm[i:i + CHUNK_BYTES])
    ws.send_binary(prefix)  # end of audio (Home Assistant's VAD has usually ended the command already)
    while (event := next_event())["type"] not in ("run-end", "error"):
        pass
    return events


@pytest.fixture(scope="module")
def wyoming_pipeline(home_assistant_core: HomeAssistantCore, amanuensis_server):
    """The Wyoming integration pointed at our server, and an assist pipeline using its STT entity."""
    ha = home_assistant_core
    status, flow = ha.http("POST", "/api/config/config_entries/flow", body={"handler": "wyoming"})
    assert status == 200 and flow.get("type") == "form", (status, flow)
    status, done = ha.http("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                           body={"host": amanuensis_server.host, "port": amanuensis_server.port})
    assert status == 200 and done.get("type") == "create_entry", (status, done)
    entry_id = done["result"]["entry_id"]
    assert done["title"] == "amanuensis"  # the program name from our info
    with ha.ws() as ws:
        deadline, stt = time.monotonic() + 60, []
        while not stt and time.monotonic() < deadline:
            stt = [e["entity_id"] for e in ws.command("config/entity_registry/list")
                   if e.get("config_entry_id") == entry_id and e["entity_id"].startswith("stt.")]
            time.sleep(0.2 if not stt else 0)
        assert len(stt) == 1, f"no stt entity for the Wyoming entry: {stt}"
        pipeline = ws.command("assist_pipeline/pipeline/create", name="Amanuensis", language="en",
                              conversation_engine="conversation.home_assistant", conversation_language="en",
                              stt_engine=stt[0], stt_language="en", tts_engine=None, tts_language=None,
                              tts_voice=None, wake_word_entity=None, wake_word_id=None)
    yield {"entry_id": entry_id, "stt_entity": stt[0], "pipeline_id": pipeline["id"]}
    ha.http("DELETE", f"/api/config/config_entries/entry/{entry_id}")


def test_wyoming_entity_reads_our_info(home_assistant_core, wyoming_pipeline):
    """Home Assistant read our describe/info: the entity is named after the program and loaded."""
    with home_assistant_core.ws() as ws:
        entries = ws.command("config_entries/get", domain="wyoming")
        states = {s["entity_id"]: s for s in ws.command("get_states")}
    entry = next(e for e in entries if e["entry_id"] == wyoming_pipeline["entry_id"])
    assert entry["state"] == "loaded", entry
    state = states[wyoming_pipeline["stt_entity"]]
    assert state["attributes"]["friendly_name"] == "amanuensis", state


@pytest.mark.parametrize("clip", CLIPS)
def test_assist_pipeline_transcribes_corpus_speech(home_assistant_core, wyoming_pipeline, clip):
    reference = (CORPUS_DIR / f"{clip}.txt").read_text(encoding="utf-8").strip()
    with home_assistant_core.ws() as ws:
        events = run_stt(ws, wyoming_pipeline["pipeline_id"], pcm16k(clip))
    types = [e["type"] for e in events]
    assert "error" not in types, events
    # Home Assistant's own VAD heard the speech and its end in the trailing silence.
    assert types[:2] == ["run-start", "stt-start"] and types[-2:] == ["stt-end", "run-end"], types
    assert "stt-vad-start" in types and "stt-vad-end" in types, types
    stt_start = events[types.index("stt-start")]["data"]
    assert stt_start["engine"] == wyoming_pipeline["stt_entity"] and stt_start["metadata"]["language"] == "en"
    text = events[types.index("stt-end")]["data"]["stt_output"]["text"]
    assert normalize(text) == normalize(reference), (text, reference)


def test_the_home_is_as_the_fixture_says(home_assistant_core):
    """What a names client reads, straight from Home Assistant's websocket API."""
    ha = home_assistant_core
    with ha.ws() as ws:
        exposed = ws.command("homeassistant/expose_entity/list")["exposed_entities"]
        areas = {a["area_id"]: a for a in ws.command("config/area_registry/list")}
        floors = {f["floor_id"]: f for f in ws.command("config/floor_registry/list")}
    for entity in ha.entities:
        assert bool(exposed.get(entity.entity_id, {}).get("conversation")) is entity.exposed, entity
    for area in ha.areas.values():
        got = areas[area.area_id]
        assert got["name"] == area.name and set(got["aliases"]) == set(area.aliases)
        assert floors[got["floor_id"]]["name"] == area.floor
    for floor in ha.floors.values():
        assert set(floors[floor.floor_id]["aliases"]) == set(floor.aliases)
    assert ha.floor_of(next(e for e in ha.entities if e.entity_id == "light.office_light")) == "First floor"


async def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_names_client_reads_what_is_exposed(home_assistant_core):
    """wyoming_amanuensis.home_assistant against the real core: the exposed entities' names and
    aliases, their areas and floors with aliases, and nothing of the unexposed entity; exposing
    it later is picked up from the registry event, and un-exposing it again drops it."""
    names_module = pytest.importorskip("wyoming_amanuensis.home_assistant")
    ha = home_assistant_core
    fold = lambda names: {n.casefold() for n in names}  # noqa: E731
    used_areas = [ha.areas[e.area] for e in ha.exposed if e.area]
    hidden = ha.unexposed[0]
    client = names_module.HomeAssistantNames(ha.base_url, lambda: ha.token, debounce_s=0.2, debounce_max_s=2.0,
                                             backoff_initial_s=0.2, backoff_max_s=1.0)
    await client.start()
    try:
        await wait_until(lambda: client.reads >= 1, 60, f"a first read of the names (state {client.state})")
        names = client.names
        assert client.state == "connected"
        assert fold(n for e in ha.exposed for n in (e.name, *e.aliases)) <= fold(names.entities), names
        assert fold(names.areas) == fold(n for a in used_areas for n in (a.name, *a.aliases)), names
        assert fold(names.floors) == fold(n for f in {a.floor for a in used_areas}
                                          for n in (f, *ha.floors[f].aliases)), names
        assert not fold((hidden.name, *hidden.aliases)) & fold(names.all()), names

        reads = client.reads
        await asyncio.to_thread(ha.call, "homeassistant/expose_entity", assistants=["conversation"],
                                entity_ids=[hidden.entity_id], should_expose=True)
        await wait_until(lambda: client.reads > reads and hidden.name in client.names.entities, 30,
                         f"{hidden.name} after exposing it")
        assert fold(hidden.aliases) <= fold(client.names.entities)
    finally:
        await asyncio.to_thread(ha.call, "homeassistant/expose_entity", assistants=["conversation"],
                                entity_ids=[hidden.entity_id], should_expose=False)
    try:
        await wait_until(lambda: hidden.name not in client.names.entities, 30, f"{hidden.name} to go again")
    finally:
        await client.stop()

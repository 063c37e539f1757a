"""The Wyoming server over a real TCP socket, with the wyoming library's client classes.

One shared server subprocess (``amanuensis_server`` in conftest: tiny.en by
default, base selectable by name). Every request here goes through the real
engine on real speech from the shared corpus.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Optional

import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from benchmarks.corpus import CORPUS_DIR, normalize, wer
from wyoming_amanuensis.config import Settings
from wyoming_amanuensis.cost import EnergyMeter

EVENT_TIMEOUT = 120.0  # generous: CI machines are slow and shared

# Short commands tiny.en transcribes word for word (checked on this corpus).
TINY_EXACT = [
    "living_room_light",
    "s2p_gen_close_the_kitchen_windows",
    "s2p_gen_next_track",
    "s2p_gen_set_color_of_the_kitchen_lights_to_blue",
    "s2p_gen_turn_off_the_tv_in_the_office",
    "s2p_rec_is_the_garage_door_open",
    "s2p_rec_lock_the_front_door",
    "s2p_rec_what_s_the_weather_like_in_new_york",
]


# ---------------------------------------------------------------------------
# helpers

class Clip:
    def __init__(self, name: str):
        with wave.open(str(CORPUS_DIR / f"{name}.wav"), "rb") as w:
            self.rate, self.width, self.channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            self.pcm = w.readframes(w.getnframes())
        self.reference = (CORPUS_DIR / f"{name}.txt").read_text(encoding="utf-8").strip()

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (self.rate * self.width * self.channels)


def client_for(server) -> AsyncTcpClient:
    return AsyncTcpClient(server.host, server.port)


async def send_audio(client, clip: Clip, *, chunk_samples: int = 1024, pace: float = 0.0, stop: bool = True,
                     pcm: Optional[bytes] = None) -> None:
    """audio-start, 1024-sample chunks, audio-stop; ``pace`` > 0 sends at that multiple of real time."""
    pcm = clip.pcm if pcm is None else pcm
    await client.write_event(AudioStart(rate=clip.rate, width=clip.width, channels=clip.channels).event())
    step = chunk_samples * clip.width * clip.channels
    for i in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate=clip.rate, width=clip.width, channels=clip.channels,
                                            audio=pcm[i:i + step]).event())
        if pace:
            await asyncio.sleep(chunk_samples / clip.rate / pace)
    if stop:
        await client.write_event(AudioStop().event())


async def read_event(client, timeout: float = EVENT_TIMEOUT) -> Optional[Event]:
    return await asyncio.wait_for(client.read_event(), timeout)


async def read_until(client, *types: str, timeout: float = EVENT_TIMEOUT) -> list[Event]:
    """Events up to and including the first of ``types`` (or an error)."""
    events = []
    while True:
        event = await read_event(client, timeout)
        assert event is not None, f"connection closed; got {[e.type for e in events]}"
        events.append(event)
        if event.type in types or Error.is_type(event.type):
            return events


async def transcribe(server, clip: Clip, **transcribe_fields) -> Event:
    async with client_for(server) as client:
        await client.write_event(Transcribe(**transcribe_fields).event())
        await send_audio(client, clip)
        events = await read_until(client, "transcript")
    assert Transcript.is_type(events[-1].type), events[-1]
    return events[-1]


async def served(server) -> bool:
    """The server answers a new client."""
    async with client_for(server) as client:
        await client.write_event(Describe().event())
        event = await read_event(client, 10)
        return event is not None and Info.is_type(event.type)


def same_words(hypothesis: str, reference: str) -> bool:
    return normalize(hypothesis) == normalize(reference)


# ---------------------------------------------------------------------------
# describe / transcribe

async def test_describe_info(amanuensis_server):
    async with client_for(amanuensis_server) as client:
        await client.write_event(Describe().event())
        event = await read_event(client)
    info = Info.from_event(event)
    assert len(info.asr) == 1
    program = info.asr[0]
    assert program.name == "amanuensis" and program.installed and program.version
    assert program.attribution.name and program.attribution.url
    assert program.supports_transcript_streaming is True
    models = {m.name: m for m in program.models}
    assert set(models) == {"tiny.en", "base"}
    assert models["tiny.en"].languages == ["en"]
    assert {"en", "de", "fr", "es", "nl"} <= set(models["base"].languages)
    assert all(m.installed and m.attribution.name for m in models.values())
    # Whether commands carry joules, said once at start-up (this repository's test host has no RAPL counters).
    assert EnergyMeter.detect().status.describe() in program.description


async def test_command_44k_stereo_in_1024_sample_chunks(amanuensis_server):
    clip = Clip("lamp_44k_stereo")
    assert (clip.rate, clip.channels) == (44100, 2)
    event = await transcribe(amanuensis_server, clip, name="base", language="en")
    transcript = Transcript.from_event(event)
    assert same_words(transcript.text, clip.reference), transcript.text
    assert transcript.language == "en"
    # Extra fields standard clients ignore: where the time went.
    data = event.data
    assert set(data["timings"]) >= {"audio_ms", "mel_ms", "encoder_ms", "decoder_ms", "total_ms", "queue_ms"}
    t = data["timings"]
    assert t["audio_ms"] > 0  # 44.1 kHz stereo was really converted, chunk by chunk
    # (each value is rounded to 0.001 ms on the wire: allow that much per term)
    assert t["total_ms"] + 0.005 >= t["audio_ms"] + t["mel_ms"] + t["encoder_ms"] + t["decoder_ms"] > 0
    # What it cost: CPU seconds of the engine's stages, at most every core for the whole time.
    assert 0 < t["cpu_s"] <= (t["total_ms"] - t["audio_ms"]) / 1000 * os.cpu_count() + 0.001
    assert (t["energy_j"] is None) == (not EnergyMeter.detect().available)  # unknown, not zero, where unreadable
    assert data["model"] == "base" and data["encoder_backend"] == "cpu"
    # What was transcribed is the VAD's window: up to a margin after the speech (2.5 s of quiet follow).
    start, end = data["window_s"]
    assert start == 0 and data["speech_s"][1] < end < clip.seconds - 1.0
    assert abs(data["audio_seconds"] - (end - start)) < 0.002
    assert data["endpoint"] == "audio-stop" and data["answer_ms"] >= 0
    assert data["tokens"] > 0 and data["realtime_factor"] > 0 and data["request_id"]


async def test_one_wav_gives_the_same_words_through_server_command_and_benchmark(amanuensis_server):
    """One audio path: the server converts 1024-sample chunks as they arrive, the transcribe
    command and the benchmark convert the whole file; all three must hear the same thing."""
    clip = Clip("lamp_44k_stereo")
    path = CORPUS_DIR / "lamp_44k_stereo.wav"
    served = (await transcribe(amanuensis_server, clip, name="base", language="en")).data["text"]
    out = subprocess.run([sys.executable, "-m", "wyoming_amanuensis", "transcribe", "--json", "--model", "base",
                          "--language", "en", "--encoder-backend", "cpu", "--threads", "1", str(path)],
                         capture_output=True, text=True, timeout=300, check=True)
    command = json.loads(out.stdout.strip().splitlines()[-1])["text"]

    from benchmarks.bench_engine import amanuensis_system
    from benchmarks.corpus import Clip as CorpusClip
    from wyoming_amanuensis.audio import to_16k
    from wyoming_amanuensis.config import settings_from

    system = amanuensis_system("amanuensis", settings_from(model="base", encoder_backend="cpu", threads=1), "en")
    benchmark, _ = system.run(to_16k(*CorpusClip(path.stem, path, clip.reference).read())[0])
    assert served == command == benchmark, (served, command, benchmark)
    assert same_words(served, clip.reference)


async def test_model_selected_by_name_and_language_normalised(amanuensis_server):
    clip = Clip("living_room_light")
    tiny = await transcribe(amanuensis_server, clip)  # no name: the default model
    base = await transcribe(amanuensis_server, clip, name="base", language="en-US")
    assert tiny.data["model"] == "tiny.en" and base.data["model"] == "base"
    assert base.data["language"] == "en"
    assert same_words(tiny.data["text"], clip.reference) and same_words(base.data["text"], clip.reference)


async def test_transcript_names_bias_decoding(amanuensis_server):
    clip = Clip("s2p_gen_turn_bed_light_off")  # base alone hears "Turn bad light off."
    plain = await transcribe(amanuensis_server, clip, name="base", language="en")
    named = await transcribe(amanuensis_server, clip, name="base", language="en",
                             transcript_names=["Bed Light", "Kitchen"], transcript_terms=["brightness"])
    assert not same_words(plain.data["text"], clip.reference)
    assert same_words(named.data["text"], clip.reference), named.data["text"]
    assert named.data["timings"]["names_ms"] > 0


async def test_a_huge_names_list_does_not_hold_up_other_clients(amanuensis_server):
    """16,000 transcript_names (~300 KiB) once blocked the event loop for 3.7 s (a prompt built
    quadratically on it): now they are cleaned in one bounded pass and the list is used off the loop."""
    names = [f"Device number {i} in the house" for i in range(16_000)]
    clip = Clip("s2p_gen_next_track")
    async with client_for(amanuensis_server) as big, client_for(amanuensis_server) as probe:
        await big.write_event(Transcribe(name="base", language="en", transcript_names=names).event())
        t0 = time.monotonic()
        await probe.write_event(Describe().event())
        event = await read_event(probe, 5)
        elapsed = time.monotonic() - t0
        assert event is not None and Info.is_type(event.type)
        assert elapsed < 1.0, f"describe took {elapsed:.2f} s"
        await send_audio(big, clip)
        events = await read_until(big, "transcript")
    assert same_words(events[-1].data["text"], clip.reference), events[-1].data["text"]


async def test_streaming_partials_while_audio_arrives_then_final(amanuensis_server):
    clip = Clip("jfk")  # 11 s, 44.1 kHz stereo, sent at 1.5x real time
    async with client_for(amanuensis_server) as client:
        request = Transcribe(language="en").event()
        request.data["streaming"] = True
        await client.write_event(request)
        events: list[tuple[float, Event]] = []

        async def reader():
            while True:
                event = await read_event(client)
                assert event is not None
                events.append((time.monotonic(), event))
                if TranscriptStop.is_type(event.type) or Error.is_type(event.type):
                    return

        reading = asyncio.create_task(reader())
        await send_audio(client, clip, pace=1.5)
        audio_done = time.monotonic()
        await asyncio.wait_for(reading, EVENT_TIMEOUT)

    types = [e.type for _, e in events]
    assert types[0] == "transcript-start", types
    assert types[-2:] == ["transcript", "transcript-stop"], types
    chunks = [TranscriptChunk.from_event(e).text for _, e in events if TranscriptChunk.is_type(e.type)]
    early = [e for t, e in events if TranscriptChunk.is_type(e.type) and t < audio_done]
    assert early, "no partial text arrived while audio was still being sent"
    final = Transcript.from_event(events[-2][1]).text
    assert wer([clip.reference], [final]) < 0.1, final
    # Chunks are appended text, never retracted: together they open the final transcript, except
    # that the final may revise the last word two partial decodes agreed on (here "asked" for
    # "ask not": the transcript event is the authority, see streaming.Stabilizer).
    sent, final_words = normalize("".join(chunks)).split(), normalize(final).split()
    assert len(sent) >= 3 and sent[:-1] == final_words[:len(sent) - 1], (chunks, final)


async def test_several_utterances_on_one_connection(amanuensis_server):
    a, b, c = Clip("s2p_gen_next_track"), Clip("living_room_light"), Clip("s2p_rec_lock_the_front_door")
    async with client_for(amanuensis_server) as client:
        for clip in (a, b):
            await client.write_event(Transcribe().event())
            await send_audio(client, clip)
            events = await read_until(client, "transcript")
            assert same_words(events[-1].data["text"], clip.reference)
        # A new transcribe in the middle of an utterance drops it: only c is answered.
        await client.write_event(Transcribe().event())
        await send_audio(client, a, stop=False)
        await client.write_event(Transcribe().event())
        await send_audio(client, c)
        events = await read_until(client, "transcript")
        assert [e.type for e in events] == ["transcript"]
        assert same_words(events[-1].data["text"], c.reference)
        # So does a new audio-start without a transcribe.
        await send_audio(client, b, stop=False)
        await send_audio(client, a)
        events = await read_until(client, "transcript")
        assert same_words(events[-1].data["text"], a.reference)


async def test_eight_concurrent_clients_get_their_own_transcripts(amanuensis_server):
    clips = [Clip(name) for name in TINY_EXACT]
    results = await asyncio.gather(*(transcribe(amanuensis_server, clip) for clip in clips))
    for clip, event in zip(clips, results):
        assert same_words(event.data["text"], clip.reference), (clip.reference, event.data["text"])
    ids = {event.data["request_id"] for event in results}
    assert len(ids) == 8


async def test_describe_within_1s_while_4_long_utterances_transcribe(amanuensis_server):
    jfk = Clip("jfk")
    long_pcm = jfk.pcm * 2  # 22 s each, on the larger model
    # The server uses one torch thread; keep the other core busy too.
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    clients = [client_for(amanuensis_server) for _ in range(4)]
    try:
        for client in clients:
            await client.connect()
            await client.write_event(Transcribe(name="base", language="en").event())
        await asyncio.gather(*(send_audio(client, jfk, pcm=long_pcm) for client in clients))
        pending = [asyncio.create_task(read_until(client, "transcript")) for client in clients]
        await asyncio.sleep(0.5)
        async with client_for(amanuensis_server) as probe:
            t0 = time.monotonic()
            await probe.write_event(Describe().event())
            event = await read_event(probe, 5)
            elapsed = time.monotonic() - t0
        still_transcribing = sum(1 for t in pending if not t.done())
        assert event is not None and Info.is_type(event.type)
        assert elapsed < 1.0, f"describe took {elapsed:.2f} s"
        assert still_transcribing >= 1
        done = await asyncio.gather(*pending)
        for events in done:
            assert wer([jfk.reference + " " + jfk.reference], [events[-1].data["text"]]) < 0.2
    finally:
        burner.kill()
        burner.wait()
        for client in clients:
            await client.disconnect()


# ---------------------------------------------------------------------------
# bad input: an error event, and the next client is served

async def expect_error(client, code: str) -> Error:
    events = await read_until(client, "error")
    assert Error.is_type(events[-1].type), [e.type for e in events]
    error = Error.from_event(events[-1])
    assert error.code == code, error
    assert error.text
    return error


async def test_audio_before_audio_start(amanuensis_server):
    clip = Clip("s2p_gen_next_track")
    async with client_for(amanuensis_server) as client:
        for _ in range(5):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=clip.pcm[:2048]).event())
        await client.write_event(AudioStop().event())
        await expect_error(client, "no-audio-start")
        # One error for the stray audio, nothing for its audio-stop; the connection goes on.
        await client.write_event(Transcribe().event())
        await send_audio(client, clip)
        events = await read_until(client, "transcript")
        assert [e.type for e in events] == ["transcript"]
        assert same_words(events[-1].data["text"], clip.reference)
    assert await served(amanuensis_server)


async def test_audio_stop_with_no_audio_gives_empty_transcript(amanuensis_server):
    async with client_for(amanuensis_server) as client:
        await client.write_event(Transcribe().event())
        await client.write_event(AudioStop().event())  # no audio-start either, as some satellites do
        events = await read_until(client, "transcript")
        assert Transcript.from_event(events[-1]).text == ""
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioStop().event())
        events = await read_until(client, "transcript")
        assert Transcript.from_event(events[-1]).text == ""
    assert await served(amanuensis_server)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


async def test_a_huge_low_rate_chunk_is_refused_before_it_is_converted(amanuensis_server):
    """16 MiB of 1 kHz / 8-bit audio is 4.7 minutes: once converted to 16 kHz floats first
    (+1 GB, a 2 s stall) and then refused; now its length is checked from the header first."""
    pid = amanuensis_server.proc.pid
    before = peak_rss_mib(pid)
    async with client_for(amanuensis_server) as client, client_for(amanuensis_server) as probe:
        await client.write_event(Transcribe().event())
        await client.write_event(AudioStart(rate=1000, width=1, channels=1).event())
        await client.write_event(AudioChunk(rate=1000, width=1, channels=1, audio=bytes(16 << 20)).event())
        t0 = time.monotonic()
        await probe.write_event(Describe().event())
        assert Info.is_type((await read_event(probe, 5)).type)
        assert time.monotonic() - t0 < 1.0
        await expect_error(client, "audio-too-long")
    assert peak_rss_mib(pid) - before < 200
    assert await served(amanuensis_server)


@pytest.mark.parametrize("width", [0, 5, 8])
async def test_unsupported_sample_width(amanuensis_server, width):
    async with client_for(amanuensis_server) as client:
        await client.write_event(Transcribe().event())
        await client.write_event(AudioStart(rate=16000, width=width, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=width, channels=1, audio=bytes(4000)).event())
        await client.write_event(AudioStop().event())
        await expect_error(client, "unsupported-audio")
        # A chunk whose own format is bad, after a good audio-start.
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=width, channels=1, audio=bytes(4000)).event())
        await expect_error(client, "unsupported-audio")
    assert await served(amanuensis_server)


async def test_utterance_over_the_maximum_is_refused_while_it_streams(amanuensis_server):
    second = 16000 * 2
    async with client_for(amanuensis_server) as client:
        await client.write_event(Transcribe().event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        limit = Settings().max_utterance_s
        for _ in range(int(limit) + 1):  # one second over the default maximum
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(second)).event())
        # The error comes before audio-stop: the audio is dropped as soon as it is too long.
        error = await expect_error(client, "audio-too-long")
        assert f"{limit:g}" in error.text
        for _ in range(5):  # the rest of that utterance is ignored
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(second)).event())
        await client.write_event(AudioStop().event())
        clip = Clip("living_room_light")
        await client.write_event(Transcribe().event())
        await send_audio(client, clip)
        events = await read_until(client, "transcript")
        assert [e.type for e in events] == ["transcript"]
    assert await served(amanuensis_server)


async def raw_exchange(server, data: bytes) -> tuple[list[Event], bool]:
    """Write raw bytes, read events until the server closes; (events, closed)."""
    from wyoming.event import async_read_event

    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        events = []
        while True:
            event = await asyncio.wait_for(async_read_event(reader), 10)
            if event is None:
                return events, True
            events.append(event)
    finally:
        writer.close()


@pytest.mark.parametrize("frame, code", [
    (b"{this is not json\n", "malformed-event"),
    (b"[1, 2, 3]\n", "malformed-event"),
    (b'{"type": "audio-chunk", "data_length": "ten"}\n', "malformed-event"),
    (b'{"type": "transcribe", "data_length": 5}\n[1,2]', "malformed-event"),
    (b'{"type": "' + b"x" * 70_000 + b'"}\n', "header-too-large"),
    (b"y" * 200_000, "header-too-large"),
    (b'{"type": "audio-chunk", "data_length": 100000000}\n', "data-too-large"),
    (b'{"type": "audio-chunk", "payload_length": 1000000000}\n', "payload-too-large"),
])
async def test_bad_frames_close_the_connection_not_the_server(amanuensis_server, frame, code):
    events, closed = await raw_exchange(amanuensis_server, frame)
    assert closed
    assert [e.type for e in events] == ["error"], events
    assert Error.from_event(events[0]).code == code
    assert await served(amanuensis_server)


async def test_bad_fields_unknown_model_and_program(amanuensis_server):
    async with client_for(amanuensis_server) as client:
        await client.write_event(Event(type="transcribe", data={"language": 5}))
        await expect_error(client, "bad-request")
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioStop().event())  # the refused request's utterance: ignored
        await client.write_event(Event(type="audio-start", data={"rate": "fast", "width": 2, "channels": 1}))
        await expect_error(client, "bad-request")
        await client.write_event(Transcribe(vad_sensitivity="sleepy").event())
        error = await expect_error(client, "bad-request")
        assert "vad_sensitivity" in error.text and "aggressive" in error.text
        await client.write_event(Transcribe(name="large-v3").event())
        error = await expect_error(client, "unknown-model")
        assert "tiny.en" in error.text
        await client.write_event(Event(type="select-program", data={"name": "someone-else"}))
        await expect_error(client, "unknown-program")
        await client.write_event(Describe().event())
        assert Info.is_type((await read_until(client, "info"))[-1].type)
    assert await served(amanuensis_server)


def server_sockets(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_client_vanishing_mid_utterance_leaves_nothing_behind(amanuensis_server):
    pid = amanuensis_server.proc.pid
    assert await served(amanuensis_server)
    baseline = server_sockets(pid)
    clip = Clip("jfk")
    for stop in (False, True):  # mid-audio, and right after audio-stop (transcript pending)
        for _ in range(3):
            client = client_for(amanuensis_server)
            await client.connect()
            await client.write_event(Transcribe(name="base").event())
            await send_audio(client, clip, stop=stop)
            await client.disconnect()
    deadline = time.monotonic() + 30
    while server_sockets(pid) > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert server_sockets(pid) <= baseline
    assert same_words((await transcribe(amanuensis_server, Clip("s2p_gen_next_track"))).data["text"], "next track")
    assert "Traceback" not in amanuensis_server.log()


# ---------------------------------------------------------------------------
# health command, other transports, graceful stop

def run_health(uri: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyoming_amanuensis", "health", "--uri", uri, "--timeout", "10"],
                          capture_output=True, text=True, timeout=60)


def test_health_command(amanuensis_server):
    ok = run_health(amanuensis_server.uri)
    assert ok.returncode == 0, ok.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    down = run_health(f"tcp://127.0.0.1:{port}")
    assert down.returncode == 1 and "unhealthy" in down.stderr


def test_unix_socket_and_graceful_sigterm(server_factory, tmp_path):
    sock = tmp_path / "amanuensis.sock"
    server = server_factory(uri=f"unix://{sock}", model_args=("--model", "tiny.en", "--threads", "1"))
    assert run_health(f"unix://{sock}").returncode == 0
    clip = Clip("jfk")

    async def scenario():
        from wyoming.client import AsyncUnixClient

        async with AsyncUnixClient(str(sock)) as busy, AsyncUnixClient(str(sock)) as idle:
            await idle.write_event(Describe().event())
            await read_until(idle, "info")
            await busy.write_event(Transcribe().event())
            await send_audio(busy, clip)
            server.proc.send_signal(signal.SIGTERM)
            # The utterance in flight is finished and answered; the idle client is let go.
            events = await read_until(busy, "transcript")
            assert wer([clip.reference], [events[-1].data["text"]]) < 0.1
            assert await read_event(idle, 30) is None
            assert await read_event(busy, 30) is None

    asyncio.run(scenario())
    assert server.proc.wait(60) == 0
    assert not sock.exists()
    assert "Traceback" not in server.log()


def test_stdio_transport(tmp_path):
    from wyoming.event import read_event as read_sync, write_event as write_sync

    clip = Clip("living_room_light")
    proc = subprocess.Popen([sys.executable, "-m", "wyoming_amanuensis", "--uri", "stdio://", "--model", "tiny.en",
                             "--threads", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "log", "wb"))
    try:
        for event in [Describe().event(), Transcribe().event(),
                      AudioStart(rate=clip.rate, width=clip.width, channels=clip.channels).event(),
                      AudioChunk(rate=clip.rate, width=clip.width, channels=clip.channels, audio=clip.pcm).event(),
                      AudioStop().event()]:
            write_sync(event, proc.stdin)
        proc.stdin.close()  # end of input: pending transcripts are still answered
        got = []
        while (event := read_sync(proc.stdout)) is not None:
            got.append(event)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [e.type for e in got] == ["info", "transcript"], got
    assert same_words(got[1].data["text"], clip.reference)


async def test_batch_decoding_serves_concurrent_clients_in_batches(server_factory):
    """--batch-decoding: finals that wait together are decoded in one batch, each client
    still gets its own transcript."""
    server = server_factory(("--batch-decoding", "--batch-decode-size", "4", "--debug"))
    clips = [Clip(name) for name in TINY_EXACT]
    results = await asyncio.gather(*(transcribe(server, clip) for clip in clips))
    for clip, event in zip(clips, results):
        assert same_words(event.data["text"], clip.reference), (clip.reference, event.data["text"])
    assert "waiting requests in one batch" in server.log()

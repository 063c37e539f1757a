"""Voice activity in the server: trimmed windows, speculative finals, server-side endpointing.

Real servers over real TCP, the real Silero VAD and real models on corpus speech.
What the server did is read from the transcript's extra fields (``window_s``,
``endpoint``, ``ended_at_s``, ``speculation``), which are positions in the
audio, not wall-clock times, so the checks do not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.info import Describe, Info

from benchmarks.corpus import CORPUS_DIR, normalize
from test_server import client_for, read_event, read_until
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import Settings
from wyoming_amanuensis.request import ENDPOINT_SILENCE_S
from wyoming_amanuensis.speculation import USED
from wyoming_amanuensis.vad import FRAME, SileroVad, SpeechTracker

RATE = 16000
PAD_AFTER = Settings().vad_pad_after_s


def speech(name: str) -> np.ndarray:
    samples, rate = sf.read(str(CORPUS_DIR / f"{name}.wav"), dtype="float32")
    return to_16k(samples, rate)[0]


def reference(name: str) -> str:
    return (CORPUS_DIR / f"{name}.txt").read_text(encoding="utf-8").strip()


def noise(seconds: float, seed: int = 3) -> np.ndarray:
    """Quiet room noise (-55 dBFS RMS, white): what a satellite sends between words."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 10 ** (-55 / 20)).astype(np.float32)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def stream(client, audio: np.ndarray, *, pace: float = 0.0, stop: bool = True) -> None:
    """audio-start, 1024-sample chunks (at ``pace`` x real time; 0 = as fast as possible), audio-stop."""
    await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
    for i in range(0, audio.size, 1024):
        await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm16(audio[i:i + 1024])).event())
        if pace:
            await asyncio.sleep(1024 / RATE / pace)
    if stop:
        await client.write_event(AudioStop().event())


async def transcript_of(server, audio: np.ndarray, *, pace: float = 0.0, **fields) -> dict:
    async with client_for(server) as client:
        await client.write_event(Transcribe(**fields).event())
        await stream(client, audio, pace=pace)
        events = await read_until(client, "transcript")
    assert Transcript.is_type(events[-1].type), events[-1]
    return events[-1].data


# ---------------------------------------------------------------------------
# the VAD itself

def test_speech_span_depends_neither_on_chunking_nor_on_what_follows():
    vad = SileroVad()
    clip = speech("s2p_rec_set_a_timer_for_30_seconds")
    spans = []
    for trailing, chunk in ((0.25, 1024), (2.0, 1024), (0.7, 333), (1.25, 16000)):
        tracker = SpeechTracker(vad)
        audio = np.concatenate((noise(0.3), clip + noise(clip.size / RATE, seed=5), noise(trailing)))
        for i in range(0, audio.size, chunk):
            tracker.feed(audio[i:i + chunk])
        assert tracker.samples == audio.size // FRAME * FRAME
        spans.append(tracker.speech)
    assert spans[0] is not None and len(set(spans)) == 1, spans
    start, end = spans[0].start / RATE, spans[0].end / RATE
    assert 0.2 < start < 0.3 + 0.5 and 0.3 + clip.size / RATE - 1.0 < end < 0.3 + clip.size / RATE + 0.3


def test_no_speech_in_noise_and_silence():
    vad = SileroVad()
    for audio in (noise(3.0), np.zeros(3 * RATE, dtype=np.float32)):
        tracker = SpeechTracker(vad)
        tracker.feed(audio)
        assert tracker.speech is None and tracker.runs == 0 and tracker.silence_s == pytest.approx(3.0, abs=0.04)


# ---------------------------------------------------------------------------
# trimmed windows and speculative finals (the shared server: VAD on, endpointing off)

async def test_info_says_the_client_must_end_commands_without_endpointing(amanuensis_server):
    async with client_for(amanuensis_server) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await read_event(client))
    assert info.asr[0].requires_external_vad is True


async def test_trailing_noise_length_does_not_change_the_words_or_the_window(amanuensis_server):
    name = "s2p_rec_set_a_timer_for_30_seconds"  # Home Assistant saw this one change with the silence length
    clip = speech(name)
    data = []
    for trailing in (0.25, 0.7, 1.25, 2.0):
        audio = np.concatenate((noise(0.3), clip + noise(clip.size / RATE, seed=5), noise(trailing, seed=9)))
        data.append(await transcript_of(amanuensis_server, audio, name="base", language="en"))
    assert normalize(data[0]["text"]) == normalize(reference(name)), data[0]["text"]
    assert len({d["text"] for d in data}) == 1, [d["text"] for d in data]
    assert len({tuple(d["window_s"]) for d in data}) == 1, [d["window_s"] for d in data]
    assert data[-1]["ended_at_s"] - data[-1]["window_s"][1] > 1.0  # 2 s of noise received, not transcribed
    assert data[-1]["window_s"][1] == pytest.approx(data[-1]["speech_s"][1] + PAD_AFTER, abs=0.002)
    assert all(d["endpoint"] == "audio-stop" for d in data)


async def test_a_command_with_a_pause_gives_all_its_words_not_the_first_speculation(amanuensis_server):
    first, second = "s2p_rec_lock_the_front_door", "s2p_rec_is_the_garage_door_open"
    audio = np.concatenate((speech(first), noise(1.2), speech(second), noise(0.7, seed=4)))
    # Real-time pace: the first speculation (at the pause) has time to run before speech resumes.
    data = await transcript_of(amanuensis_server, audio, pace=1.0, language="en")
    assert normalize(data["text"]) == normalize(reference(first) + " " + reference(second)), data["text"]
    spec = data["speculation"]
    assert spec["runs"] >= 2  # one at the pause, outrun by the second sentence; one after it
    assert spec["outcome"] in USED and 0 < spec["used_ms"] <= spec["work_ms"]
    assert data["window_s"][1] > data["ended_at_s"] - 0.7  # the window reaches the second sentence


async def test_without_a_pause_the_final_is_computed(amanuensis_server):
    # Cut 0.1 s after the speech: the VAD never sees a pause long enough to speculate.
    clip = speech("s2p_rec_lock_the_front_door")
    tracker = SpeechTracker(SileroVad())
    tracker.feed(clip)
    data = await transcript_of(amanuensis_server, clip[: tracker.speech.end + int(0.1 * RATE)], language="en")
    assert data["speculation"]["outcome"] in ("none", "miss")
    assert data["speculation"]["work_ms"] >= data["speculation"]["used_ms"] > 0


# ---------------------------------------------------------------------------
# server-side endpointing

@pytest.fixture(scope="module")
def endpointing_server(server_factory):
    return server_factory(("--vad-endpointing", "--max-utterance-s", "5"))


async def test_info_says_no_external_vad_is_needed_with_endpointing(endpointing_server):
    async with client_for(endpointing_server) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await read_event(client))
    assert info.asr[0].requires_external_vad is False


@pytest.mark.parametrize("sensitivity", list(ENDPOINT_SILENCE_S))
async def test_endpointing_follows_each_vad_sensitivity_and_ignores_the_rest(endpointing_server, sensitivity):
    name = "s2p_rec_lock_the_front_door"
    audio = np.concatenate((speech(name), noise(3.0)))
    async with client_for(endpointing_server) as client:
        await client.write_event(Transcribe(language="en", vad_sensitivity=sensitivity).event())
        await stream(client, audio, stop=False)  # no audio-stop: the server must end it
        events = await read_until(client, "transcript")
        data = events[-1].data
        assert Transcript.is_type(events[-1].type), events[-1]
        assert normalize(data["text"]) == normalize(reference(name)), data["text"]
        assert data["endpoint"] == "vad"
        silence = data["ended_at_s"] - data["speech_s"][1]
        # Decided on the first 1024-sample chunk after that much silence.
        assert ENDPOINT_SILENCE_S[sensitivity] <= silence < ENDPOINT_SILENCE_S[sensitivity] + 0.1, silence
        # A client that keeps streaming after the answer is not an error: the rest is taken in silence.
        await stream(client, noise(1.0), stop=True)
        await client.write_event(Describe().event())
        after = await read_event(client)
        assert Info.is_type(after.type), after


async def test_a_sound_before_the_command_does_not_end_it(endpointing_server):
    # This recording opens with a short burst and half a second of quiet: with 0.25 s of
    # silence enough, only the minimum of speech heard keeps that from being the command.
    name = "s2p_rec_set_a_timer_for_5_minutes"
    clip = speech(name)
    audio = np.concatenate((clip, np.zeros(3 * RATE, dtype=np.float32))) + noise(clip.size / RATE + 3)
    async with client_for(endpointing_server) as client:
        await client.write_event(Transcribe(name="base", language="en", vad_sensitivity="aggressive").event())
        await stream(client, audio, stop=False)
        events = await read_until(client, "transcript")
    data = events[-1].data
    assert data["endpoint"] == "vad" and data["ended_at_s"] > 2.0, data
    assert normalize(data["text"]) == normalize(reference(name)), data["text"]


async def test_a_command_that_never_ends_is_cut_and_answered_at_the_limit(endpointing_server):
    name = "jfk"  # 11 s with no pause as long as relaxed's 1.25 s
    audio = speech(name)
    async with client_for(endpointing_server) as client:
        await client.write_event(Transcribe(language="en", vad_sensitivity="relaxed").event())
        await stream(client, audio, stop=True)
        events = await read_until(client, "transcript")
        data = events[-1].data
        assert Transcript.is_type(events[-1].type) and data["endpoint"] == "max-utterance", events[-1]
        assert data["ended_at_s"] == pytest.approx(5.0, abs=0.01) and data["window_s"][1] <= 5.0
        assert normalize(data["text"]).startswith("and so my fellow americans"), data["text"]
        await client.write_event(Describe().event())
        after = await read_event(client)
        assert Info.is_type(after.type) and not Error.is_type(after.type), after

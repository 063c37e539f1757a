"""Property-based fuzzing of the server over TCP.

Hypothesis builds connections of random, structurally plausible and mutated
frames (well over a thousand in all; the strategies live in
benchmarks/fuzz_frames.py, shared with bench_stress). For every connection the server must
only ever answer with well-formed events of the kinds it sends, and must let
go of the connection once the client has finished; afterwards it still serves
a real request and its log holds no traceback.
"""

from __future__ import annotations

import socket
import wave

import pytest
from hypothesis import HealthCheck, given, settings
from wyoming.event import read_event

from benchmarks.corpus import CORPUS_DIR, normalize
from benchmarks.fuzz_frames import connections, encode, exchange, reply_problems

EXAMPLES = 200
MIN_FRAMES = 1000


@pytest.fixture(scope="module")
def fuzz_server(server_factory):
    # Its own server: short utterances and a short queue keep noise decodes cheap.
    return server_factory(("--max-utterance-s", "3", "--queue-depth", "2"),
                          model_args=("--model", "tiny.en", "--encoder-backend", "cpu", "--threads", "1"))


def test_random_and_mutated_frames(fuzz_server):
    port = fuzz_server.port
    sent = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(connections)
    def one_connection(batch):
        try:
            data = exchange(port, b"".join(batch))
        except socket.timeout:
            pytest.fail("the server did not close a finished connection")
        assert not reply_problems(data), reply_problems(data)
        sent.append(len(batch))

    one_connection()
    assert sum(sent) >= MIN_FRAMES
    assert fuzz_server.proc.poll() is None

    # Still serving: a real request after all that.
    with wave.open(str(CORPUS_DIR / "living_room_light.wav"), "rb") as w:
        rate, width, nch, pcm = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.info import Describe

    request = b"".join(encode(e) for e in [
        Describe().event(), Transcribe().event(), AudioStart(rate=rate, width=width, channels=nch).event(),
        AudioChunk(rate=rate, width=width, channels=nch, audio=pcm).event(), AudioStop().event()])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        stream = sock.makefile("rb")
        got = [read_event(stream), read_event(stream)]
    assert [e.type for e in got] == ["info", "transcript"]
    assert normalize(got[1].data["text"]) == normalize("Turn on the living room light.")
    assert "Traceback" not in fuzz_server.log()

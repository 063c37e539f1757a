"""The real server under the conditions of a busy house, over real TCP on corpus speech:
clients that half-close their socket, batched decoding and several engine workers that must
not change anyone's words,
and the ``busy`` answer's retry hint."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event, read_event, write_event

from tests.test_server import TINY_EXACT, Clip, served, same_words, transcribe


def request_bytes(clip: Clip, *, stop: bool = True) -> bytes:
    """transcribe, audio-start, 1024-sample chunks and (``stop``) audio-stop, as one byte string."""
    out = io.BytesIO()
    write_event(Transcribe(name="tiny.en").event(), out)
    fmt = dict(rate=clip.rate, width=clip.width, channels=clip.channels)
    write_event(AudioStart(**fmt).event(), out)
    step = 1024 * clip.width * clip.channels
    for i in range(0, len(clip.pcm), step):
        write_event(AudioChunk(audio=clip.pcm[i:i + step], **fmt).event(), out)
    if stop:
        write_event(AudioStop().event(), out)
    return out.getvalue()


def half_closed_exchange(port: int, data: bytes, timeout: float = 120.0) -> list[Event]:
    """Send ``data``, shutdown(SHUT_WR) at once, then read every event until the server closes."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while block := sock.recv(65536):
            received += block
    stream = io.BytesIO(bytes(received))
    events = []
    while (event := read_event(stream)) is not None:
        events.append(event)
    return events


async def test_a_complete_request_from_a_half_closed_socket_is_answered(amanuensis_server):
    clip = Clip("s2p_gen_next_track")
    events = await asyncio.to_thread(half_closed_exchange, amanuensis_server.port, request_bytes(clip))
    assert [e.type for e in events] == ["transcript"], events
    assert same_words(Transcript.from_event(events[0]).text, clip.reference)


async def test_a_socket_half_closed_before_audio_stop_is_a_vanished_client(amanuensis_server):
    clip = Clip("s2p_gen_next_track")
    events = await asyncio.to_thread(half_closed_exchange, amanuensis_server.port, request_bytes(clip, stop=False), 30)
    assert events == []  # dropped, and the connection closed (the read above returned)
    assert await served(amanuensis_server)


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["one-worker", "two-workers"])
async def test_twenty_concurrent_requests_batched_give_exactly_the_solo_words_and_tokens(server_factory, workers):
    """--batch-decoding: who else is talking must not change anyone's answer. The same 20
    requests (8 clips, some sent twice at once) alone, then all at once in batches of 8;
    with two workers, two batches are computed at once."""
    server = server_factory(("--batch-decoding", "--batch-decode-size", "8", "--debug", *workers),
                            model_args=("--model", "base", "--encoder-backend", "cpu", "--threads", "1"))
    # the two corpus commands whose tokens changed in a batch before per-row scales (the
    # engine-level test_batch_determinism found them), several times each, and others
    changed = ["s2p_gen_create_timer_for_6_hours_and_20_minutes", "s2p_gen_set_color_of_lights_to_green"]
    names = (changed * 5 + TINY_EXACT)[:20]
    clips = {name: Clip(name) for name in set(names)}
    solo = {}
    for name in clips:
        event = await transcribe(server, clips[name], language="en")
        solo[name] = (event.data["text"], event.data["tokens"])
    together = await asyncio.gather(*(transcribe(server, clips[name], language="en") for name in names))
    assert "waiting requests in one batch" in server.log()
    for name, event in zip(names, together):
        assert (event.data["text"], event.data["tokens"]) == solo[name], name

"""Fuzzed Wyoming frames and the socket exchange that sends them, shared by
``tests/test_server_fuzz.py`` (property test) and ``benchmarks/bench_stress.py``
(10,000+ frames with the server checked between batches).

The strategies build connections of random, structurally plausible and
mutated frames: half the connections stay well-framed (the server's state
machine is exercised past the first frame), the other half mix in corrupt
frames (its framing is): malformed headers, bad JSON, wrong types, huge or
negative lengths, random bytes and truncated payloads.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket

from hypothesis import strategies as st
from wyoming.event import Event, read_event, write_event

# Every event type the server may send; anything else in a reply is a bug.
REPLIES = {"info", "transcript", "transcript-start", "transcript-chunk", "transcript-stop", "error", "pong"}


def encode(event: Event) -> bytes:
    buf = io.BytesIO()
    write_event(event, buf)
    return buf.getvalue()


DESCRIBE = encode(Event(type="describe"))

# ---------------------------------------------------------------------------
# strategies

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
rates = st.one_of(st.sampled_from([16000, 44100, 48000, 8000, 22050]), scalars)
widths = st.one_of(st.sampled_from([1, 2, 2, 3, 4]), st.integers(-2, 9), scalars)
channels = st.one_of(st.sampled_from([1, 1, 2, 6]), st.integers(-1, 40), scalars)
payloads = st.one_of(
    st.integers(0, 6000).map(bytes),  # silence (cheap for the engine)
    st.binary(max_size=2048),  # noise or odd lengths
)
kinds = st.one_of(
    st.sampled_from(["describe", "transcribe", "audio-start", "audio-chunk", "audio-chunk", "audio-stop", "ping",
                     "select-program", "info", "transcript", "error", "run-pipeline"]),
    st.text(max_size=10),
)


@st.composite
def plausible_event(draw) -> bytes:
    kind = draw(kinds)
    data = {}
    payload = None
    if kind in ("audio-start", "audio-chunk"):
        data = {"rate": draw(rates), "width": draw(widths), "channels": draw(channels)}
        if draw(st.booleans()):
            data.pop(draw(st.sampled_from(["rate", "width", "channels"])))
        if kind == "audio-chunk":
            payload = draw(payloads)
    elif kind == "transcribe":
        data = draw(st.fixed_dictionaries({}, optional={
            "name": st.one_of(st.sampled_from(["tiny.en", "base", "amanuensis", "large"]), json_values),
            "language": st.one_of(st.sampled_from(["en", "de", "en-US", ""]), json_values),
            "transcript_names": st.one_of(st.lists(st.text(max_size=12), max_size=4), json_values),
            "transcript_terms": st.one_of(st.lists(st.text(max_size=12), max_size=4), json_values),
            "context": json_values,
            "streaming": st.booleans(),
        }))
    else:
        data = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    return encode(Event(type=kind, data=data, payload=payload))


@st.composite
def mutated_event(draw) -> bytes:
    frame = bytearray(draw(plausible_event()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if not frame:
            break
        i = draw(st.integers(0, len(frame) - 1))
        if op == "flip":
            frame[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del frame[i:i + draw(st.integers(1, 8))]
        elif op == "insert":
            frame[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del frame[i:]
    return bytes(frame)


@st.composite
def raw_header(draw) -> bytes:
    header = {"type": draw(kinds)}
    for key in ("data_length", "payload_length", "data", "version"):
        if draw(st.booleans()):
            header[key] = draw(st.one_of(st.integers(-5, 70_000), json_values))
    line = json.dumps(header).encode() + b"\n"
    return line + draw(st.binary(max_size=64))


@st.composite
def utterance(draw) -> list[bytes]:
    """transcribe, audio-start, chunks, audio-stop: fields and order perturbed now and then."""
    fmt = draw(st.sampled_from([(16000, 2, 1), (44100, 2, 2), (8000, 1, 1), (48000, 4, 2), (16000, 3, 1)]))
    fmt_data = {"rate": fmt[0], "width": fmt[1], "channels": fmt[2]}
    transcribe = draw(plausible_event().filter(lambda f: b'"transcribe"' in f[:40])) if draw(st.booleans()) \
        else encode(Event(type="transcribe"))
    chunks = [encode(Event(type="audio-chunk", data=fmt_data, payload=draw(payloads)))
              for _ in range(draw(st.integers(0, 4)))]
    seq = [transcribe, encode(Event(type="audio-start", data=fmt_data)), *chunks, encode(Event(type="audio-stop"))]
    if draw(st.integers(0, 3)) == 0:
        seq = draw(st.permutations(seq))
    return seq


corrupt = st.one_of(mutated_event(), raw_header(), st.binary(max_size=200),
                    st.binary(max_size=200).map(lambda b: b + b"\n"))
clean_items = st.one_of(plausible_event().map(lambda f: [f]), utterance())
dirty_items = st.one_of(clean_items, corrupt.map(lambda f: [f]))
# One connection: a list of frames.
connections = st.one_of(st.lists(clean_items, min_size=4, max_size=8),
                        st.lists(dirty_items, min_size=4, max_size=8)).map(lambda items: [f for i in items for f in i])


# ---------------------------------------------------------------------------
# the exchange

def exchange(port: int, data: bytes, timeout: float = 30.0, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` and a describe; once info is back (all frames handled) wait a moment
    for transcripts; then end our side and read everything until the server closes.

    Raises ``socket.timeout`` only if the server keeps the connection open ``timeout``
    seconds after our side ended."""
    received = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data + DESCRIBE)
            sock.settimeout(1.0)  # a frame that declared more bytes than came swallows the describe
            while b'"info"' not in received:
                block = sock.recv(65536)
                if not block:
                    return bytes(received)
                received += block
            if b"audio-stop" in data:
                sock.settimeout(0.3)
                while block := sock.recv(65536):
                    received += block
        except socket.timeout:
            pass
        except OSError:
            return bytes(received)  # the server closed first (a fatal frame): fine
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        while True:
            try:
                block = sock.recv(65536)
            except ConnectionResetError:
                break
            if not block:
                break
            received += block
    return bytes(received)


def replies(data: bytes) -> list[Event]:
    """The server's bytes as events; AssertionError if they are not whole, well-formed events."""
    stream = io.BytesIO(data)
    events = []
    while (event := read_event(stream)) is not None:
        events.append(event)
    assert stream.tell() == len(data), "the server wrote something that is not a whole event"
    return events


def reply_problems(data: bytes) -> list[str]:
    """What is wrong with one connection's replies (empty when nothing is)."""
    try:
        events = replies(data)
    except (AssertionError, ValueError, UnicodeDecodeError) as e:
        return [f"unreadable reply: {e!r}"]
    problems = []
    for event in events:
        if event.type not in REPLIES:
            problems.append(f"unexpected event {event.type!r}")
        elif event.type == "error" and not (event.data.get("code") and event.data.get("text")):
            problems.append(f"error without code/text: {event.data!r}")
    return problems

"""Reading Wyoming frames with limits: every header is checked before the library acts on it.

``wyoming.event.async_read_event`` reads from a :class:`GuardedReader`, so
the library's framing is used unchanged, but a bad or huge frame becomes a
:class:`ProtocolError` (sent to the client as an ``error`` event, then the
connection is closed) instead of a silent disconnect, a crash or an
unbounded read. Its codes:

``malformed-event``    a header or data block that is not a JSON object, or bad lengths
``header-too-large``   a header line over 64 KiB
``data-too-large``     a data block over 1 MiB
``payload-too-large``  a payload over 16 MiB
"""

from __future__ import annotations

import asyncio
import contextlib
import json

# A header line is bounded by asyncio's stream limit (64 KiB); data and
# payload lengths are checked before a byte of them is read.
MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 1024 * 1024
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

# After a fatal protocol error: how long / how much input is read and dropped
# before the connection is closed (so the client gets the error, not a reset).
LINGER_S = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024


class ProtocolError(Exception):
    """A frame the server will not read; the connection is closed after an error event."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def json_object(block: bytes, what: str) -> dict:
    """``block`` parsed as a JSON object, or ProtocolError naming ``what`` it was."""
    try:
        value = json.loads(block)
    except (ValueError, RecursionError):
        raise ProtocolError("malformed-event", f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("malformed-event", f"{what} must be a JSON object")
    return value


def _length(header: dict, key: str, limit: int, code: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError("malformed-event", f"'{key}' must be a non-negative integer")
    if value > limit:
        raise ProtocolError(code, f"'{key}' of {value} bytes exceeds the limit of {limit}")
    return value


class GuardedReader:
    """The two methods ``async_read_event`` calls, with every frame checked."""

    def __init__(self, reader: asyncio.StreamReader):
        self._reader = reader
        self._data_pending = False

    async def readline(self) -> bytes:
        try:
            line = await self._reader.readline()
        except ValueError:  # asyncio's stream limit: no newline within 64 KiB
            raise ProtocolError("header-too-large", f"event header longer than {MAX_HEADER_BYTES} bytes") from None
        if not line or not line.endswith(b"\n"):
            return b""  # end of stream (possibly mid-line: the client went away)
        if len(line) > MAX_HEADER_BYTES:
            raise ProtocolError("header-too-large", f"event header longer than {MAX_HEADER_BYTES} bytes")
        header = json_object(line, "event header")
        if not isinstance(header.get("type"), str) or not header["type"]:
            raise ProtocolError("malformed-event", "event header has no 'type' string")
        if "data" in header and not isinstance(header["data"], dict):
            raise ProtocolError("malformed-event", "event 'data' must be a JSON object")
        data_length = _length(header, "data_length", MAX_DATA_BYTES, "data-too-large")
        _length(header, "payload_length", MAX_PAYLOAD_BYTES, "payload-too-large")
        self._data_pending = data_length > 0
        return line

    async def readexactly(self, n: int) -> bytes:
        block = await self._reader.readexactly(n)  # IncompleteReadError: the client went away
        if self._data_pending:  # the library reads the data block first, then the payload
            self._data_pending = False
            json_object(block, "event data")
        return block


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After a fatal error: end our side, then read (and drop) what the client still
    sends for a moment, so closing does not reset the connection before the client
    has read the error event."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        dropped = 0
        while dropped < LINGER_MAX_BYTES:
            left = deadline - loop.time()
            if left <= 0:
                break
            block = await asyncio.wait_for(reader.read(65536), left)
            if not block:
                break
            dropped += len(block)

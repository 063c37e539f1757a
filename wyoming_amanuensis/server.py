"""The Wyoming server: events in, events out. Knows the protocol, not tensors.

One :class:`AmanuensisServer` owns the shared engine (through the
:class:`~wyoming_amanuensis.scheduler.Scheduler`, which runs it off the event
loop), the precomputed ``info`` answer, telemetry and the listening socket.
One :class:`ConnectionHandler` per connection holds that connection's state
only: the parameters of the last ``transcribe``, the utterance being received
(16 kHz mono 16-bit PCM, converted chunk by chunk, bounded by
``max_utterance_s``) and its streaming state.

Per connection, in order::

    describe                      -> info (from the loop, never queued)
    transcribe                    (name = model, language, transcript_names/terms -> prompt,
                                   streaming opt-in: data "streaming": true or context {"streaming": true})
    audio-start, audio-chunk*     (any rate/width/channels; partial decodes while streaming)
    audio-stop                    -> [transcript-start, transcript-chunk*] transcript [transcript-stop]

Several utterances may follow one another on one connection; a new
``transcribe`` or ``audio-start`` drops whatever utterance was in progress.

Bad input gets an ``error`` event (text + code). Codes:

=======================  =========================================================  ==================
code                     cause                                                      then
=======================  =========================================================  ==================
``no-audio-start``       ``audio-chunk`` before ``audio-start``                     chunks ignored until the next utterance
``unsupported-audio``    sample width/rate/channels the server cannot convert       utterance dropped
``audio-too-long``       more audio than ``max_utterance_s`` (checked per chunk)    utterance dropped, buffer freed
``bad-request``          an event whose fields have the wrong types                 utterance dropped
``unknown-model``        ``transcribe`` names a model that is not loaded            next utterance ignored
``busy``                 more than ``queue_depth`` transcripts waiting              utterance dropped
``shutting-down``        the server stopped before the transcript was made          utterance dropped
``unknown-program``      ``select-program`` names another program                   connection goes on
``malformed-event``      a header or data block that is not a JSON object, or bad   connection closed
                         lengths
``header-too-large``     a header line over 64 KiB                                  connection closed
``data-too-large``       a data block over 1 MiB                                    connection closed
``payload-too-large``    a payload over 16 MiB                                      connection closed
``internal-error``       a bug                                                      connection closed
=======================  =========================================================  ==================

``audio-stop`` with no audio is not an error: it gets an empty transcript, as
the reference server answers.

The final ``transcript`` event carries, besides ``text`` and ``language``,
fields standard clients ignore: ``timings`` (ms per stage, ``queue_ms``
included), ``audio_seconds``, ``realtime_factor``, ``tokens``,
``encoder_backend``, ``encoder_fallback``, ``model``, ``request_id`` and, with
word timestamps on, ``words``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import signal
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlparse

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_get_stdin, async_read_event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, SelectProgram
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer

from . import __version__
from .audio import AudioFormatError, check_format, pcm_to_float
from .config import Settings
from .pipeline import Engine, PcmInput, Request, TranscriptionError
from .scheduler import QueueFull, Scheduler, SchedulerClosed

_LOG = logging.getLogger(__name__)

PROGRAM_NAME = "amanuensis"
PROJECT_URL = "https://github.com/amanuensis-stt/wyoming-amanuensis"

RATE = 16000  # what the engine is fed: 16 kHz, 16-bit, mono
WIDTH = 2
CHANNELS = 1
BYTES_PER_SECOND = RATE * WIDTH * CHANNELS

# Frame limits. A header line is bounded by asyncio's stream limit (64 KiB);
# data and payload lengths are checked before a byte of them is read.
MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 1024 * 1024
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

# After a fatal protocol error: how long / how much input is read and dropped
# before the connection is closed (so the client gets the error, not a reset).
LINGER_S = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024

# Prompt built from transcript_names/terms: Whisper keeps the last ~223 prompt
# tokens, so keep it short, with names (higher priority) nearest the speech.
MAX_PROMPT_CHARS = 600


# ---------------------------------------------------------------------------
# Telemetry is optional until its package lands; once present it is used.

def _telemetry_classes() -> tuple[Any, Any]:
    spec = importlib.util.find_spec(f"{__package__}.telemetry")
    if spec is None or spec.origin is None:  # absent, or a folder without __init__.py yet
        return None, None
    from .telemetry import RequestEvent, Telemetry  # noqa: PLC0415 - optional module

    return Telemetry, RequestEvent


TelemetryClass, RequestEventClass = _telemetry_classes()


# ---------------------------------------------------------------------------
# Reading frames with limits

class ProtocolError(Exception):
    """A frame the server will not read; the connection is closed after an error event."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _GuardedReader:
    """What ``wyoming.event.async_read_event`` reads from: checks every header
    before the library acts on it, so the library's framing is used unchanged
    but a bad or huge frame becomes a :class:`ProtocolError` instead of a silent
    disconnect, a crash or an unbounded read."""

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
        try:
            header = json.loads(line)
        except (ValueError, RecursionError):
            raise ProtocolError("malformed-event", "event header is not valid JSON") from None
        if not isinstance(header, dict):
            raise ProtocolError("malformed-event", "event header must be a JSON object")
        if not isinstance(header.get("type"), str) or not header["type"]:
            raise ProtocolError("malformed-event", "event header has no 'type' string")
        if "data" in header and not isinstance(header["data"], dict):
            raise ProtocolError("malformed-event", "event 'data' must be a JSON object")
        data_length = self._length(header, "data_length", MAX_DATA_BYTES, "data-too-large")
        self._length(header, "payload_length", MAX_PAYLOAD_BYTES, "payload-too-large")
        self._data_pending = data_length > 0
        return line

    @staticmethod
    def _length(header: dict, key: str, limit: int, code: str) -> int:
        value = header.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProtocolError("malformed-event", f"'{key}' must be a non-negative integer")
        if value > limit:
            raise ProtocolError(code, f"'{key}' of {value} bytes exceeds the limit of {limit}")
        return value

    async def readexactly(self, n: int) -> bytes:
        block = await self._reader.readexactly(n)  # IncompleteReadError: the client went away
        if self._data_pending:  # the library reads the data block first, then the payload
            self._data_pending = False
            try:
                data = json.loads(block)
            except (ValueError, RecursionError):
                raise ProtocolError("malformed-event", "event data is not valid JSON") from None
            if not isinstance(data, dict):
                raise ProtocolError("malformed-event", "event data must be a JSON object")
        return block


class BadRequest(ValueError):
    """An event whose fields have the wrong types or values."""


def _int_field(data: dict, key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer, got {value!r}")
    return value


def _opt_str(data: dict, key: str) -> Optional[str]:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _opt_str_list(data: dict, key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"'{key}' must be a list of strings")
    return value


def _audio_format(data: dict) -> tuple[int, int, int]:
    fmt = (_int_field(data, "rate"), _int_field(data, "width"), _int_field(data, "channels"))
    check_format(*fmt)  # AudioFormatError
    return fmt


# ---------------------------------------------------------------------------
# Request parameters, prompt, streaming text

@dataclass
class _Params:
    """What the last ``transcribe`` asked for (applies to the utterances after it)."""

    model: Optional[str] = None
    language: Optional[str] = None
    prompt: Optional[str] = None
    streaming: bool = False
    rejected: bool = False  # the transcribe was refused with an error: ignore its utterance


def build_prompt(names: list[str], terms: list[str]) -> Optional[str]:
    """Names and terms as a decoding prompt. Whisper attends most to the tokens
    nearest the speech and keeps only the last ~223 prompt tokens, so terms come
    first and names (higher priority) last; the oldest items go when too long."""
    items: list[str] = []
    for item in [*terms, *names]:
        item = " ".join(item.split())
        if item and item not in items:
            items.append(item)
        elif item in items:  # keep the later (higher-priority) position
            items.remove(item)
            items.append(item)
    while items and len(", ".join(items)) > MAX_PROMPT_CHARS:
        items.pop(0)
    return ", ".join(items) or None


class _Stabilizer:
    """Turns successive partial hypotheses into appended text chunks.

    A word is sent once two consecutive partial decodes agree on it and on
    everything before it (local agreement), so chunks are rarely wrong and
    never retracted: concatenated they form a prefix of the final text, and
    :meth:`finish` sends the rest. If the final text revised an already sent
    word, the final ``transcript`` event is the authority."""

    def __init__(self) -> None:
        self.sent = ""
        self._committed: list[str] = []
        self._previous: Optional[list[str]] = None

    def update(self, text: str) -> str:
        words = text.split()
        delta = ""
        if self._previous is not None:
            n = 0
            for a, b in zip(self._previous, words):
                if a != b:
                    break
                n += 1
            k = len(self._committed)
            if n > k and words[:k] == self._committed:
                delta = (" " if self.sent else "") + " ".join(words[k:n])
                self._committed = words[:n]
                self.sent += delta
        self._previous = words
        return delta

    def finish(self, final: str) -> str:
        if not self.sent:
            return final
        if final.startswith(self.sent):
            return final[len(self.sent):]
        return ""


def _wants_streaming(data: dict) -> bool:
    if data.get("streaming") is True:
        return True
    context = data.get("context")
    return isinstance(context, dict) and context.get("streaming") is True


# ---------------------------------------------------------------------------
# One utterance

@dataclass
class _Utterance:
    params: _Params
    max_bytes: int
    pcm: bytearray = field(default_factory=bytearray)
    refused: bool = False  # an error was sent; ignore the rest until the next utterance
    converter: Optional[AudioChunkConverter] = None
    converter_rate: int = 0
    stream_started: bool = False  # transcript-start sent
    stabilizer: _Stabilizer = field(default_factory=_Stabilizer)
    partial_task: Optional[asyncio.Task] = None
    partial_at: int = 0  # bytes of audio the last partial decode saw
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def to_16k(self, rate: int, width: int, channels: int, audio: bytes) -> bytes:
        """Any PCM -> 16 kHz mono 16-bit. Channels are averaged (not summed, which
        clips) and widths normalised with numpy; the rate with the library's
        converter, whose resampler state carries across chunks."""
        frame = width * channels
        audio = audio[: len(audio) - len(audio) % frame]
        if (width, channels) != (WIDTH, CHANNELS):
            x = pcm_to_float(audio, width, channels).mean(axis=1)
            audio = (np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
        if self.converter is None or self.converter_rate != rate:
            self.converter = AudioChunkConverter(rate=RATE, width=WIDTH, channels=CHANNELS)
            self.converter_rate = rate
        return self.converter.convert(AudioChunk(rate=rate, width=WIDTH, channels=CHANNELS, audio=audio)).audio


# ---------------------------------------------------------------------------
# The server

def build_info(engine: Engine, settings: Settings) -> Info:
    whisper = Attribution(name="OpenAI Whisper", url="https://github.com/openai/whisper")
    models = [
        AsrModel(name=name, description=f"Whisper {name}", attribution=whisper, installed=True,
                 languages=list(languages), version=None)
        for name, languages in engine.model_languages().items()
    ]
    return Info(asr=[AsrProgram(
        name=PROGRAM_NAME,
        description=f"Amanuensis: local Whisper speech-to-text (encoder on {engine.encoder_backend})",
        attribution=Attribution(name="Amanuensis", url=PROJECT_URL),
        installed=True,
        version=__version__,
        models=models,
        supports_transcript_streaming=bool(settings.streaming),
        requires_external_vad=True,
    )])


class AmanuensisServer:
    """Shared state: engine, scheduler, info, telemetry, live connections."""

    def __init__(self, settings: Settings, engine: Engine, telemetry: Any = None) -> None:
        self.settings = settings
        self.engine = engine
        self.telemetry = telemetry
        self.scheduler = Scheduler(settings.queue_depth,
                                   batch_size=settings.batch_decode_size if settings.batch_decoding else 1,
                                   run_batch=engine.transcribe_pcm_batch if settings.batch_decoding else None)
        self.info_event = build_info(engine, settings).event()
        self.handlers: set[ConnectionHandler] = set()
        self.stopping = False
        self._wyoming: Optional[AsyncServer] = None
        self._stdio_task: Optional[asyncio.Task] = None

    # ---------------------------------------------------------------- start
    async def start(self) -> None:
        """Start the scheduler and listen on ``settings.uri`` (returns at once)."""
        await self.scheduler.start()
        uri = self.settings.uri
        if uri.startswith("stdio://"):
            self._stdio_task = asyncio.create_task(self._serve_stdio(), name="amanuensis stdio")
            return
        self._wyoming = AsyncServer.from_uri(uri)
        await self._wyoming.start(self._new_handler)

    def _new_handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> "ConnectionHandler":
        return ConnectionHandler(reader, writer, self)

    async def _serve_stdio(self) -> None:
        reader = await async_get_stdin()
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        handler = ConnectionHandler(reader, writer, self, finish_on_eof=True)
        await handler.run()

    @property
    def address(self) -> Optional[tuple]:
        """(host, port) actually bound for tcp:// (port 0 picks a free one), else None."""
        srv = getattr(self._wyoming, "_server", None)
        if srv is None or not srv.sockets:
            return None
        return srv.sockets[0].getsockname()[:2]

    async def wait_closed(self) -> None:
        """Block until stdio input ends (tcp/unix: until :meth:`stop`)."""
        if self._stdio_task is not None:
            await self._stdio_task
        else:
            await asyncio.Event().wait()

    # ----------------------------------------------------------------- stop
    async def stop(self, timeout: Optional[float] = None) -> None:
        """Stop listening; idle connections close now, connections in the middle of an
        utterance get their transcript first (up to ``timeout`` seconds), then the
        rest is closed."""
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        self.stopping = True
        srv = getattr(self._wyoming, "_server", None)
        if srv is not None:
            srv.close()
        for handler in list(self.handlers):
            handler.close_when_idle()
        tasks = [h.task for h in self.handlers if h.task is not None]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                _LOG.warning("%d connection(s) still busy after %.1f s; closing them", len(pending), timeout)
            for handler in list(self.handlers):
                await handler.stop()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.scheduler.close()
        if self._stdio_task is not None and not self._stdio_task.done():
            self._stdio_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stdio_task
        if isinstance(self._wyoming, AsyncServer) and self.settings.uri.startswith("unix://"):
            with contextlib.suppress(OSError):
                self._wyoming.socket_path.unlink(missing_ok=True)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ telemetry
    def record(self, request_id: str, params: _Params, outcome: str, result: Any = None, queue_ms: float = 0.0) -> None:
        if self.telemetry is None or RequestEventClass is None:
            return
        try:
            self.telemetry.record(RequestEventClass(
                request_id=request_id,
                model=(result.model if result is not None else params.model) or self.engine.default_model,
                language=result.language if result is not None else params.language,
                outcome=outcome, result=result, queue_ms=queue_ms,
                encoder_backend=result.encoder_backend if result is not None else self.engine.encoder_backend,
            ))
        except Exception:  # noqa: BLE001 - telemetry must never break a request
            _LOG.exception("telemetry record failed")


class ConnectionHandler(AsyncEventHandler):
    """One client connection. All state here is this connection's own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: AmanuensisServer,
                 *, finish_on_eof: bool = False) -> None:
        super().__init__(reader, writer)
        self.server = server
        self.settings = server.settings
        self.task: Optional[asyncio.Task] = None
        self._guard = _GuardedReader(reader)
        self._finish_on_eof = finish_on_eof  # stdio: input ending is normal, answer what is pending
        self._params = _Params()
        self._utt: Optional[_Utterance] = None
        self._finals: set[asyncio.Task] = set()
        self._last_final: Optional[asyncio.Task] = None
        self._close_when_idle = False
        self._closed = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "local"

    # ------------------------------------------------------------- the loop
    async def run(self) -> None:
        self.task = asyncio.current_task()
        self.server.handlers.add(self)
        _LOG.debug("%s connected", self.peer)
        eof = False
        try:
            while not self._closed:
                try:
                    event = await async_read_event(self._guard)  # type: ignore[arg-type]
                except ProtocolError as err:
                    _LOG.warning("%s: %s (%s); closing the connection", self.peer, err, err.code)
                    await self._error(err.code, str(err))
                    await self._discard_input()
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    eof = True
                    break
                if event is None:
                    eof = True
                    break
                try:
                    if not await self.handle_event(event):
                        break
                except Exception:  # noqa: BLE001 - a bug must not take the server down
                    _LOG.exception("%s: error handling %s", self.peer, event.type)
                    await self._error("internal-error", f"internal error handling '{event.type}'")
                    break
            if eof and self._finish_on_eof and self._finals:
                await asyncio.wait(list(self._finals))
        finally:
            await self.disconnect()
            self._closed = True
            with contextlib.suppress(Exception):
                self.writer.close()
            self.server.handlers.discard(self)
            _LOG.debug("%s disconnected", self.peer)

    async def _discard_input(self) -> None:
        """After a fatal error: end our side, then read (and drop) what the client still
        sends for a moment, so closing does not reset the connection before the client
        has read the error event."""
        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LINGER_S
            dropped = 0
            while dropped < LINGER_MAX_BYTES:
                left = deadline - loop.time()
                if left <= 0:
                    break
                block = await asyncio.wait_for(self.reader.read(65536), left)
                if not block:
                    break
                dropped += len(block)

    async def disconnect(self) -> None:
        """The connection is over: cancel this connection's pending work."""
        tasks = [t for t in self._finals if not t.done()]
        if self._utt is not None:
            await self._drop_utterance(record=True, outcome="disconnected")
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        self._closed = True
        await super().stop()

    def close_when_idle(self) -> None:
        """Server shutdown: close now if nothing is in progress, else after the pending transcript."""
        self._close_when_idle = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._close_when_idle and self._utt is None and not any(not t.done() for t in self._finals):
            self._closed = True
            with contextlib.suppress(Exception):
                self.writer.close()
            self.reader.feed_eof()

    # --------------------------------------------------------------- output
    async def _send(self, event: Event) -> bool:
        if self.writer.is_closing():
            return False
        try:
            await async_write_event(event, self.writer)
            return True
        except (ConnectionError, RuntimeError):
            return False

    async def _error(self, code: str, text: str) -> None:
        await self._send(Error(text=text, code=code).event())

    # --------------------------------------------------------------- events
    async def handle_event(self, event: Event) -> bool:
        kind = event.type
        if Describe.is_type(kind):
            await self._send(self.server.info_event)
            return True
        if AudioChunk.is_type(kind):
            await self._on_chunk(event)
            return True
        if Transcribe.is_type(kind):
            await self._on_transcribe(event)
            return True
        if AudioStart.is_type(kind):
            await self._on_audio_start(event)
            return True
        if AudioStop.is_type(kind):
            await self._on_audio_stop()
            return True
        if Ping.is_type(kind):
            text = event.data.get("text")
            await self._send(Pong(text=text if isinstance(text, str) else None).event())
            return True
        if SelectProgram.is_type(kind):
            name = event.data.get("name")
            if name != PROGRAM_NAME:
                await self._error("unknown-program", f"no program named {name!r}; this server has '{PROGRAM_NAME}'")
            return True
        _LOG.debug("%s: ignoring event %s", self.peer, kind)
        return True

    async def _on_transcribe(self, event: Event) -> None:
        await self._drop_utterance(record=True, outcome="replaced")
        data = event.data
        try:
            model = _opt_str(data, "name")
            language = _opt_str(data, "language")
            names = _opt_str_list(data, "transcript_names")
            terms = _opt_str_list(data, "transcript_terms")
            if data.get("context") is not None and not isinstance(data.get("context"), dict):
                raise BadRequest("'context' must be an object")
        except BadRequest as err:
            self._params = _Params(rejected=True)
            await self._error("bad-request", f"transcribe: {err}")
            return
        loaded = self.server.engine.model_languages()
        if model in (None, "", PROGRAM_NAME):
            model = None
        elif model not in loaded:
            self._params = _Params(rejected=True)
            await self._error("unknown-model", f"model {model!r} is not loaded (loaded: {', '.join(loaded)})")
            return
        self._params = _Params(
            model=model,
            language=self._language(language, loaded[model or self.server.engine.default_model]),
            prompt=build_prompt(names, terms),
            streaming=_wants_streaming(data) and self.settings.streaming,
        )

    @staticmethod
    def _language(language: Optional[str], known: list[str]) -> Optional[str]:
        """'en-US' -> 'en' when the model knows 'en' but not 'en-US'; empty -> None."""
        if not language or not language.strip():
            return None
        language = language.strip()
        if language in known:
            return language
        base = language.replace("_", "-").split("-")[0].lower()
        return base if base in known else language

    async def _on_audio_start(self, event: Event) -> None:
        await self._drop_utterance(record=True, outcome="replaced")
        params = self._params
        utt = _Utterance(params=params, max_bytes=int(self.settings.max_utterance_s * RATE) * WIDTH * CHANNELS)
        self._utt = utt
        if params.rejected:
            utt.refused = True
            return
        try:
            _audio_format(event.data)
        except (BadRequest, AudioFormatError) as err:
            await self._refuse(utt, "unsupported-audio" if isinstance(err, AudioFormatError) else "bad-request",
                               f"audio-start: {err}")

    async def _on_chunk(self, event: Event) -> None:
        utt = self._utt
        if utt is None:
            # Audio with no utterance: refuse once, ignore the rest of it.
            utt = self._utt = _Utterance(params=self._params, max_bytes=0)
            await self._refuse(utt, "no-audio-start", "audio-chunk before audio-start")
            return
        if utt.refused:
            return
        try:
            rate, width, channels = _audio_format(event.data)
            pcm = utt.to_16k(rate, width, channels, event.payload or b"")
        except (BadRequest, AudioFormatError) as err:
            await self._refuse(utt, "unsupported-audio" if isinstance(err, AudioFormatError) else "bad-request",
                               f"audio-chunk: {err}")
            return
        except Exception as err:  # noqa: BLE001 - a converter failure is this utterance's problem
            await self._refuse(utt, "unsupported-audio", f"audio-chunk: cannot convert audio: {err}")
            return
        if len(utt.pcm) + len(pcm) > utt.max_bytes:
            await self._refuse(utt, "audio-too-long",
                               f"utterance longer than the maximum of {self.settings.max_utterance_s:g} s")
            return
        utt.pcm += pcm
        self._maybe_partial(utt)

    async def _on_audio_stop(self) -> None:
        utt, self._utt = self._utt, None
        if self._params.rejected:
            self._params = _Params()  # a refused transcribe covers one utterance
            if utt is None or utt.params.rejected:
                self._maybe_close()
                return
        if utt is not None and utt.refused:
            self._cancel_partial(utt)
            self._maybe_close()
            return  # its error was already sent
        if utt is None:
            utt = _Utterance(params=self._params, max_bytes=0)  # audio-stop with no audio: empty transcript
        task = asyncio.create_task(self._final(utt, self._last_final), name=f"final {utt.request_id}")
        self._finals.add(task)
        self._last_final = task
        task.add_done_callback(self._final_done)

    def _final_done(self, task: asyncio.Task) -> None:
        self._finals.discard(task)
        if self._last_final is task:
            self._last_final = None
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("%s: final transcript task failed", self.peer, exc_info=task.exception())
        self._maybe_close()

    async def _refuse(self, utt: _Utterance, code: str, text: str) -> None:
        utt.refused = True
        utt.pcm = bytearray()  # memory stays bounded: the audio is dropped now
        self._cancel_partial(utt)
        if code != "no-audio-start":
            self.server.record(utt.request_id, utt.params, code)
        _LOG.info("%s: refused utterance %s: %s (%s)", self.peer, utt.request_id, text, code)
        await self._error(code, text)

    async def _drop_utterance(self, *, record: bool, outcome: str) -> None:
        utt, self._utt = self._utt, None
        if utt is None:
            return
        self._cancel_partial(utt)
        if utt.stream_started and not self.writer.is_closing():
            await self._send(TranscriptStop().event())  # close the stream the client saw open
        if record and not utt.refused and utt.pcm:
            self.server.record(utt.request_id, utt.params, outcome)

    @staticmethod
    def _cancel_partial(utt: _Utterance) -> None:
        if utt.partial_task is not None and not utt.partial_task.done():
            utt.partial_task.cancel()

    # ------------------------------------------------------------- partials
    def _maybe_partial(self, utt: _Utterance) -> None:
        if not utt.params.streaming or utt.refused:
            return
        if utt.partial_task is not None and not utt.partial_task.done():
            return  # at most one partial decode in flight per connection
        if self._finals or self.server.scheduler.finals_waiting or self.server.stopping:
            return  # never delay a final transcript, ours or anyone's
        if len(utt.pcm) - utt.partial_at < self.settings.partial_interval_s * BYTES_PER_SECOND:
            return
        utt.partial_at = len(utt.pcm)
        utt.partial_task = asyncio.create_task(self._partial(utt, bytes(utt.pcm)), name=f"partial {utt.request_id}")

    async def _partial(self, utt: _Utterance, pcm: bytes) -> None:
        request = Request(model=utt.params.model, language=utt.params.language, prompt=utt.params.prompt,
                          partial=True)
        fn = functools.partial(self.server.engine.transcribe_pcm, pcm, RATE, WIDTH, CHANNELS, request)
        try:
            done = await self.server.scheduler.run_partial(fn)
        except (TranscriptionError, SchedulerClosed) as err:
            _LOG.debug("%s: partial decode failed: %s", self.peer, err)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            _LOG.exception("%s: partial decode failed", self.peer)
            return
        if done is None or self._utt is not utt or utt.refused:
            return
        delta = utt.stabilizer.update(done[0].text)
        if delta:
            await self._start_stream(utt)
            await self._send(TranscriptChunk(text=delta).event())

    async def _start_stream(self, utt: _Utterance) -> None:
        if not utt.stream_started:
            utt.stream_started = True
            await self._send(TranscriptStart(language=utt.params.language).event())

    # ---------------------------------------------------------------- final
    async def _final(self, utt: _Utterance, previous: Optional[asyncio.Task]) -> None:
        try:
            await self._final_inner(utt, previous)
        except asyncio.CancelledError:
            # The client went away (or the server is closing it): nothing to send.
            _LOG.info("%s: %s dropped: the connection closed before its transcript", self.peer, utt.request_id)
            self.server.record(utt.request_id, utt.params, "disconnected")
            raise

    async def _final_inner(self, utt: _Utterance, previous: Optional[asyncio.Task]) -> None:
        params = utt.params
        if utt.partial_task is not None:
            utt.partial_task.cancel()
            await asyncio.gather(utt.partial_task, return_exceptions=True)
        if previous is not None:
            await asyncio.wait([previous])  # transcripts go out in the order the utterances ended
        pcm, utt.pcm = bytes(utt.pcm), bytearray()
        result = None
        queue_ms = 0.0
        if pcm:
            request = Request(model=params.model, language=params.language, prompt=params.prompt)
            fn = functools.partial(self.server.engine.transcribe_pcm, pcm, RATE, WIDTH, CHANNELS, request)
            item = PcmInput(pcm, RATE, WIDTH, CHANNELS, request)
            del pcm
            try:
                result, queue_ms = await self.server.scheduler.run_final(fn, batch_item=item)
            except (QueueFull, SchedulerClosed) as err:
                return await self._final_error(utt, err.code, str(err))
            except TranscriptionError as err:
                return await self._final_error(utt, err.code, str(err))
            except Exception as err:  # noqa: BLE001
                _LOG.exception("%s: transcription %s failed", self.peer, utt.request_id)
                return await self._final_error(utt, "internal-error", f"transcription failed: {err}")
            result.timings.queue_ms = queue_ms

        text = result.text if result is not None else ""
        language = result.language if result is not None else params.language
        if params.streaming:
            await self._start_stream(utt)
            rest = utt.stabilizer.finish(text)
            if rest:
                await self._send(TranscriptChunk(text=rest).event())
        event = Transcript(text=text, language=language).event()
        event.data["request_id"] = utt.request_id
        if result is not None:
            event.data.update({k: v for k, v in result.as_dict().items() if k not in ("text", "language")})
        await self._send(event)
        if params.streaming:
            await self._send(TranscriptStop().event())
        self.server.record(utt.request_id, params, "ok", result, queue_ms)
        if result is not None:
            t = result.timings
            _LOG.info("%s: %s %.2f s audio, %d tokens, %s, queue %.0f ms, total %.0f ms", self.peer, utt.request_id,
                      result.audio_seconds, result.tokens, result.model, t.queue_ms, t.total_ms)
            _LOG.debug("%s: %s text: %r", self.peer, utt.request_id, text)  # transcripts only in debug logs

    async def _final_error(self, utt: _Utterance, code: str, text: str) -> None:
        _LOG.warning("%s: utterance %s failed: %s (%s)", self.peer, utt.request_id, text, code)
        self.server.record(utt.request_id, utt.params, code)
        if utt.stream_started:
            await self._send(TranscriptStop().event())
        await self._error(code, text)


# ---------------------------------------------------------------------------
# Entry point

async def serve(settings: Settings, engine: Engine, *, stop: Optional[asyncio.Event] = None,
                ready: Optional[asyncio.Future] = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT), then shut down gracefully."""
    telemetry = None
    if TelemetryClass is not None:
        telemetry = TelemetryClass(settings, encoder_backend=engine.encoder_backend,
                                   models=list(engine.model_languages()), version=__version__)
    server = AmanuensisServer(settings, engine, telemetry)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    advertiser = None
    try:
        if telemetry is not None:
            await telemetry.start()
        await server.start()
        _LOG.info("listening on %s (models: %s; encoder: %s; queue depth %d)", settings.uri,
                  ", ".join(engine.model_languages()), engine.encoder_backend, settings.queue_depth)
        if settings.zeroconf and settings.uri.startswith("tcp://"):
            from .zeroconf import advertise  # noqa: PLC0415 - only when asked for

            address = server.address
            advertiser = await advertise(settings.zeroconf, urlparse(settings.uri).hostname or "", address[1])
        elif settings.zeroconf:
            _LOG.warning("zeroconf needs a tcp:// uri; not advertising %s", settings.uri)
        if ready is not None and not ready.done():
            ready.set_result(server)
        waiter = asyncio.create_task(stop.wait())
        closed = asyncio.create_task(server.wait_closed())
        await asyncio.wait([waiter, closed], return_when=asyncio.FIRST_COMPLETED)
        for t in (waiter, closed):
            t.cancel()
        await asyncio.gather(waiter, closed, return_exceptions=True)
        _LOG.info("stopping: finishing in-flight utterances (up to %.1f s)", settings.shutdown_timeout_s)
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if advertiser is not None:
            await advertiser.close()
        await server.stop()
        if telemetry is not None:
            with contextlib.suppress(Exception):
                await telemetry.stop()


def run(settings: Settings) -> int:
    """``python -m wyoming_amanuensis``: load the models, serve until SIGTERM."""
    from .model.ct2 import ModelFileError  # noqa: PLC0415
    from .model.loader import ModelNotFoundError  # noqa: PLC0415

    try:
        engine = Engine.load(settings)
    except (ModelNotFoundError, ModelFileError, TranscriptionError, ValueError) as err:
        _LOG.error("cannot load the model: %s", err)
        return 1
    try:
        asyncio.run(serve(settings, engine))
    except OSError as err:  # e.g. the port is taken
        _LOG.error("cannot serve on %s: %s", settings.uri, err)
        return 1
    finally:
        engine.close()
    _LOG.info("stopped")
    return 0

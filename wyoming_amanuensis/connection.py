"""One Wyoming connection: events in, events out. Knows the protocol, not tensors.

A :class:`ConnectionHandler` holds one connection's state only: the
:class:`~wyoming_amanuensis.request.Request` of the last ``transcribe`` and
the :class:`~wyoming_amanuensis.utterance.Utterance` being received (converted
to 16 kHz chunk by chunk, bounded by ``max_utterance_s``, watched by the VAD).
What it shares (engine, scheduler, VAD, telemetry) belongs to the
:class:`~wyoming_amanuensis.server.AmanuensisServer` that made it. Frames are
read through :mod:`framing`, ``transcribe`` fields parsed by :mod:`request`,
partial text stabilised by :mod:`streaming`.

Per connection, in order::

    describe                      -> info (from the loop, never queued)
    transcribe                    (name = model, language, transcript_names/terms + the home's names -> biasing,
                                   streaming opt-in: data "streaming": true or context {"streaming": true})
    audio-start, audio-chunk*     (any rate/width/channels; VAD, speculative finals, partial decodes)
    audio-stop                    -> [transcript-start, transcript-chunk*] transcript [transcript-stop]

With ``--vad-endpointing`` the transcript may come before ``audio-stop``: the
server ends the command itself after the silence it was told to wait for (or
at ``max_utterance_s``), answers, and takes in silence whatever audio follows
until ``audio-stop``. What the VAD, trimming and speculation do: :mod:`utterance`,
:mod:`speculation`.

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
``busy``                 more than ``queue_depth`` transcripts waiting              utterance dropped; the
                                                                                    error's data has
                                                                                    ``retry_after_s``
``shutting-down``        the server stopped before the transcript was made          utterance dropped
``unknown-program``      ``select-program`` names another program                   connection goes on
``internal-error``       a bug                                                      connection closed
=======================  =========================================================  ==================

A frame the server will not read (``malformed-event``, ``header-too-large``,
``data-too-large``, ``payload-too-large``: see :mod:`framing`) closes the
connection after its error event.

``audio-stop`` with no audio is not an error: it gets an empty transcript, as
the reference server answers.

The final ``transcript`` event carries, besides ``text`` and ``language``,
fields standard clients ignore: ``timings`` (ms per stage, ``queue_ms``
included), ``audio_seconds``, ``realtime_factor``, ``tokens``,
``encoder_backend``, ``encoder_fallback``, ``model``, ``request_id``,
``endpoint``, ``window_s``, ``answer_ms``, ``speculation`` (see
:meth:`Utterance.answer_data`) and, with word timestamps on, ``words``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Optional

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, SelectProgram
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler

from .audio import SAMPLE_RATE, AudioFormatError
from .framing import GuardedReader, ProtocolError, linger
from .pipeline import TranscriptionError
from .request import PROGRAM_NAME, BadRequest, Job, Request, audio_format, parse_transcribe
from .result import Result
from .scheduler import QueueFull, SchedulerClosed
from .utterance import Utterance, new_utterance

if TYPE_CHECKING:
    from .server import AmanuensisServer

_LOG = logging.getLogger(__name__)


class ConnectionHandler(AsyncEventHandler):
    """One client connection. All state here is this connection's own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: "AmanuensisServer") -> None:
        super().__init__(reader, writer)
        self.server = server
        self.settings = server.settings
        self.task: Optional[asyncio.Task] = None
        self._guard = GuardedReader(reader)
        self._request = Request()
        self._rejected = False  # the last transcribe was refused: ignore its utterance
        self._utt: Optional[Utterance] = None
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
                    await linger(self.reader, self.writer)
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
                    # Events already buffered are read without the loop ever waiting: one client's
                    # whole clip would be converted and run through the VAD before anyone else got
                    # a turn (50 clients arriving at once held a describe for 1.7-4.4 s; bench_stress).
                    await asyncio.sleep(0)
                except Exception:  # noqa: BLE001 - a bug must not take the server down
                    _LOG.exception("%s: error handling %s", self.peer, event.type)
                    await self._error("internal-error", f"internal error handling '{event.type}'")
                    break
            if eof:
                # A client may end its side once its request is complete (shutdown(SHUT_WR), stdio
                # input ending): what ended with audio-stop is still answered, as the reference
                # server does. Only an utterance cut off before its audio-stop is a vanished client.
                await self._drop_utterance(record=True, outcome="disconnected")
                if self._finals:
                    await asyncio.wait(list(self._finals))
        finally:
            await self.disconnect()
            self._closed = True
            with contextlib.suppress(Exception):
                self.writer.close()
            self.server.handlers.discard(self)
            _LOG.debug("%s disconnected", self.peer)

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

    async def cut_off(self) -> None:
        """Server shutdown ran out of time: a client still waiting on an utterance (streaming
        it, or waiting for its transcript) is told so before its connection closes."""
        waiting = any(not t.done() for t in self._finals)
        utt = self._utt
        if utt is not None and not utt.refused and not utt.ended:
            await self._drop_utterance(record=True, outcome="shutting-down")
            waiting = True
        if waiting:
            await self._error("shutting-down", "the server is shutting down; this utterance was not transcribed")

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
        except (ConnectionError, RuntimeError) as err:
            _LOG.debug("%s: cannot write %s: %s", self.peer, event.type, err)
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
        engine = self.server.engine
        try:
            self._request = parse_transcribe(event.data, engine.model_languages(), engine.default_model,
                                             streaming_offered=self.settings.streaming,
                                             home_names=self.server.home_names)
            self._rejected = False
        except BadRequest as err:
            self._request, self._rejected = Request(), True
            await self._error(err.code, f"transcribe: {err}" if err.code == "bad-request" else str(err))

    async def _on_audio_start(self, event: Event) -> None:
        await self._drop_utterance(record=True, outcome="replaced")
        utt = new_utterance(self._request, self.settings, self.server.vad, self.server.scheduler)
        self._utt = utt
        if self._rejected:
            utt.refused = True
            return
        try:
            audio_format(event.data)
        except (BadRequest, AudioFormatError) as err:
            await self._refuse(utt, "unsupported-audio" if isinstance(err, AudioFormatError) else "bad-request",
                               f"audio-start: {err}")

    async def _on_chunk(self, event: Event) -> None:
        utt = self._utt
        if utt is None:
            # Audio with no utterance: refuse once, ignore the rest of it.
            utt = self._utt = Utterance(request=self._request, max_samples=0)
            await self._refuse(utt, "no-audio-start", "audio-chunk before audio-start")
            return
        if utt.refused or utt.ended:
            return  # refused, or answered already (server endpointing): the rest is ignored
        payload = event.payload or b""
        try:
            rate, width, channels = audio_format(event.data)
            # Checked before converting, from the header and the payload's length: conversion
            # multiplies a low-rate chunk (16 MiB at 1 kHz / 8 bit is 256 s, 64 MB as 16 kHz floats).
            room = utt.max_samples - utt.samples
            frames = len(payload) // (width * channels)
            over = frames * SAMPLE_RATE > (room + 1) * rate
            if over:  # only what fits is converted (server endpointing answers it), if anything
                payload = payload[:(room * rate // SAMPLE_RATE) * width * channels] if utt.endpoint_s is not None else b""
            audio = utt.converter.pcm(payload, rate, width, channels)
        except (BadRequest, AudioFormatError) as err:
            await self._refuse(utt, "unsupported-audio" if isinstance(err, AudioFormatError) else "bad-request",
                               f"audio-chunk: {err}")
            return
        except Exception as err:  # noqa: BLE001 - a converter failure is this utterance's problem
            await self._refuse(utt, "unsupported-audio", f"audio-chunk: cannot convert audio: {err}")
            return
        if over or utt.samples + audio.size > utt.max_samples:
            if utt.endpoint_s is not None and utt.samples:
                # The server ends commands here: one that never ends is cut at the limit and answered.
                utt.add(audio[:utt.max_samples - utt.samples])
                self._finish(utt, "max-utterance")
                return
            await self._refuse(utt, "audio-too-long",
                               f"utterance longer than the maximum of {self.settings.max_utterance_s:g} s")
            return
        utt.add(audio)
        utt.speculate()
        if utt.endpoint_reached():
            self._finish(utt, "vad")
            return
        self._maybe_partial(utt)

    async def _on_audio_stop(self) -> None:
        utt, self._utt = self._utt, None
        if self._rejected:
            self._rejected = False  # a refused transcribe covers one utterance
            if utt is None or utt.refused:
                self._maybe_close()
                return
        if utt is not None and (utt.refused or utt.ended):
            self._cancel_partial(utt)
            self._maybe_close()
            return  # its error or its transcript (server endpointing) was already sent
        if utt is None:
            utt = Utterance(request=self._request, max_samples=0)  # audio-stop with no audio: empty transcript
        self._finish(utt, "audio-stop")

    def _finish(self, utt: Utterance, reason: str) -> None:
        """The utterance has ended (``reason``): make its final transcript, after any earlier one."""
        utt.end(reason)
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

    async def _refuse(self, utt: Utterance, code: str, text: str) -> None:
        utt.refused = True
        utt.drop_audio()  # memory stays bounded: the audio is dropped now
        self._cancel_partial(utt)
        if utt.speculator is not None:
            utt.speculator.withdraw()
        if code != "no-audio-start":
            self.server.record(utt.request_id, utt.request, code)
        _LOG.info("%s: refused utterance %s: %s (%s)", self.peer, utt.request_id, text, code)
        await self._error(code, text)

    async def _drop_utterance(self, *, record: bool, outcome: str) -> None:
        utt, self._utt = self._utt, None
        if utt is None or utt.ended:
            return  # nothing, or answered already (its final owns the rest)
        self._cancel_partial(utt)
        if utt.speculator is not None:
            utt.speculator.withdraw()
        if utt.stream_started and not self.writer.is_closing():
            await self._send(TranscriptStop().event())  # close the stream the client saw open
        if record and not utt.refused and utt.samples:
            self.server.record(utt.request_id, utt.request, outcome)

    @staticmethod
    def _cancel_partial(utt: Utterance) -> None:
        if utt.partial_task is not None and not utt.partial_task.done():
            utt.partial_task.cancel()

    # ------------------------------------------------------------- partials
    def _maybe_partial(self, utt: Utterance) -> None:
        if not utt.request.streaming or utt.refused or utt.ended:
            return
        if utt.partial_task is not None and not utt.partial_task.done():
            return  # at most one partial decode in flight per connection
        if self._finals or self.server.scheduler.finals_waiting or self.server.stopping:
            return  # never delay a final transcript, ours or anyone's
        if utt.samples - utt.partial_at < self.settings.partial_interval_s * SAMPLE_RATE:
            return
        utt.partial_at = utt.samples
        utt.partial_task = asyncio.create_task(self._partial(utt, utt.partial_job()), name=f"partial {utt.request_id}")

    async def _partial(self, utt: Utterance, job: Job) -> None:
        try:
            result = await self.server.scheduler.run_partial(job)
        except (TranscriptionError, SchedulerClosed) as err:
            _LOG.debug("%s: partial decode failed: %s", self.peer, err)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            _LOG.exception("%s: partial decode failed", self.peer)
            return
        if result is None or self._utt is not utt or utt.refused or utt.ended:
            return
        _LOG.debug("%s: %s partial over %.2f s: %r", self.peer, utt.request_id, result.audio_seconds, result.text)
        delta = utt.stabilizer.update(result.text)
        if delta:
            await self._start_stream(utt)
            await self._send(TranscriptChunk(text=delta).event())

    async def _start_stream(self, utt: Utterance) -> None:
        if not utt.stream_started:
            utt.stream_started = True
            await self._send(TranscriptStart(language=utt.request.language).event())

    # ---------------------------------------------------------------- final
    async def _final(self, utt: Utterance, previous: Optional[asyncio.Task]) -> None:
        try:
            await self._final_inner(utt, previous)
        except asyncio.CancelledError:
            # The client went away (or the server is closing it): nothing to send.
            _LOG.info("%s: %s dropped: the connection closed before its transcript", self.peer, utt.request_id)
            self.server.record(utt.request_id, utt.request, "disconnected")
            raise

    async def _final_inner(self, utt: Utterance, previous: Optional[asyncio.Task]) -> None:
        request = utt.request
        if utt.partial_task is not None:
            utt.partial_task.cancel()
            await asyncio.gather(utt.partial_task, return_exceptions=True)
        if previous is not None:
            await asyncio.wait([previous])  # transcripts go out in the order the utterances ended
        job, window = utt.final_job()
        result: Optional[Result] = None
        computed = False
        if job.audio.size:
            try:
                if utt.speculator is not None:
                    result = await utt.speculator.answer(window)
                if result is None:
                    computed = True
                    result = await self.server.scheduler.run_final(job)
            except QueueFull as err:
                return await self._final_error(utt, err.code, str(err), retry_after_s=err.retry_after_s)
            except (SchedulerClosed, TranscriptionError) as err:
                return await self._final_error(utt, err.code, str(err))
            except Exception as err:  # noqa: BLE001
                _LOG.exception("%s: transcription %s failed", self.peer, utt.request_id)
                return await self._final_error(utt, "internal-error", f"transcription failed: {err}")
        text = result.text if result is not None else ""
        language = result.language if result is not None else request.language
        if request.streaming:
            await self._start_stream(utt)
            rest = utt.stabilizer.finish(text)
            if rest:
                await self._send(TranscriptChunk(text=rest).event())
        event = Transcript(text=text, language=language).event()
        event.data["request_id"] = utt.request_id
        if result is not None:
            event.data.update({k: v for k, v in result.as_dict().items() if k not in ("text", "language")})
        answer = utt.answer_data(job, window, computed)
        del job
        event.data.update(answer)
        if not await self._send(event):
            # A client that closed both ways after audio-stop looks like a half-closed one until
            # this write: its transcript was computed (one bounded run) and goes nowhere.
            _LOG.debug("%s: %s computed, but the client is gone", self.peer, utt.request_id)
            self.server.record(utt.request_id, request, "disconnected", result, answer)
            return
        if request.streaming:
            await self._send(TranscriptStop().event())
        self.server.record(utt.request_id, request, "ok", result, answer)
        if result is not None:
            t = result.timings
            _LOG.info("%s: %s %.2f s audio, %d tokens, %s, queue %.0f ms, total %.0f ms", self.peer, utt.request_id,
                      result.audio_seconds, result.tokens, result.model, t.queue_ms, t.total_ms)
            _LOG.debug("%s: %s text: %r", self.peer, utt.request_id, text)  # transcripts only in debug logs

    async def _final_error(self, utt: Utterance, code: str, text: str, *,
                           retry_after_s: Optional[float] = None) -> None:
        _LOG.warning("%s: utterance %s failed: %s (%s)", self.peer, utt.request_id, text, code)
        self.server.record(utt.request_id, utt.request, code)
        if utt.stream_started:
            await self._send(TranscriptStop().event())
        event = Error(text=text, code=code).event()
        if retry_after_s is not None:
            event.data["retry_after_s"] = retry_after_s
        await self._send(event)

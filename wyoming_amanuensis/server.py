"""The Wyoming server: what every connection shares, and the listening socket.

One :class:`AmanuensisServer` owns the shared engine (through the
:class:`~wyoming_amanuensis.scheduler.Scheduler`, which runs it off the event
loop), the VAD network, the precomputed ``info`` answer, telemetry, the names
read from Home Assistant (:attr:`AmanuensisServer.home_names`) and the
listening socket, and starts one :class:`~wyoming_amanuensis.connection.ConnectionHandler`
per client (the protocol itself, with its error codes, is described there).
:mod:`app` starts and stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Optional

from wyoming.event import async_get_stdin
from wyoming.server import AsyncServer

from .config import Settings
from .connection import ConnectionHandler
from .home_assistant import HomeAssistantNames
from .info import build_info
from .pipeline import Engine
from .request import Request
from .result import Result
from .scheduler import Scheduler
from .telemetry import RequestEvent, Telemetry
from .vad import SileroVad

_LOG = logging.getLogger(__name__)


class AmanuensisServer:
    """Shared state: engine, scheduler, info, telemetry, live connections."""

    def __init__(self, settings: Settings, engine: Engine, telemetry: Optional[Telemetry] = None) -> None:
        self.settings = settings
        self.engine = engine
        self.telemetry = telemetry
        self.scheduler = Scheduler(engine.run, settings.queue_depth,
                                   batch_size=settings.batch_decode_size if settings.batch_decoding else 1,
                                   workers=settings.workers, ready=engine.ready)
        self._info: Optional[tuple] = None  # (what it depends on, the info event)
        self.vad = SileroVad() if settings.vad_enabled else None  # shared by every connection
        self.names_source = HomeAssistantNames.from_settings(settings)  # None unless ha_url is set
        self.handlers: set[ConnectionHandler] = set()
        self.stopping = False
        self._wyoming: Optional[AsyncServer] = None
        self._stdio_task: Optional[asyncio.Task] = None

    @property
    def info_event(self):
        """The ``info`` answer, built again only when what it says changed: the encoder backend is
        the setting ("auto") until the engine has loaded and then the one chosen."""
        key = (self.engine.encoder_backend, self.engine.energy_status().describe())
        if self._info is None or self._info[0] != key:
            self._info = (key, build_info(self.engine, self.settings).event())
        return self._info[1]

    # ---------------------------------------------------------------- start
    async def start(self) -> None:
        """Start the scheduler and the names source, listen on ``settings.uri`` (returns at once)."""
        await self.scheduler.start()
        if self.names_source is not None:
            await self.names_source.start()  # connects in the background; requests never wait for it
        uri = self.settings.uri
        if uri.startswith("stdio://"):
            self._stdio_task = asyncio.create_task(self._serve_stdio(), name="amanuensis stdio")
            return
        self._wyoming = AsyncServer.from_uri(uri)
        await self._wyoming.start(self._new_handler)

    def _new_handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> ConnectionHandler:
        return ConnectionHandler(reader, writer, self)

    async def _serve_stdio(self) -> None:
        reader = await async_get_stdin()
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        handler = ConnectionHandler(reader, writer, self)
        await handler.run()

    @property
    def home_names(self) -> tuple[str, ...]:
        """The names a speaker may say in this home, as last read from Home Assistant (places,
        then entity names and aliases; de-duplicated). Empty when off or not read yet. A
        snapshot: cheap to read per request, replaced whole when Home Assistant changes."""
        return self.names_source.names.all() if self.names_source is not None else ()

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
        rest get a ``shutting-down`` error and are closed."""
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
                await handler.cut_off()
                await handler.stop()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.scheduler.close()
        if self.names_source is not None:
            await self.names_source.stop()
        if self._stdio_task is not None and not self._stdio_task.done():
            self._stdio_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stdio_task
        if isinstance(self._wyoming, AsyncServer) and self.settings.uri.startswith("unix://"):
            with contextlib.suppress(OSError):
                self._wyoming.socket_path.unlink(missing_ok=True)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ telemetry
    def record(self, request_id: str, request: Request, outcome: str, result: Optional[Result] = None,
               answer: Optional[dict] = None) -> None:
        """One finished request (ok or an error code) to telemetry, which never raises.
        ``answer``: the transcript's answer fields (:meth:`Utterance.answer_data`)."""
        if self.telemetry is None:
            return
        answer = answer or {}
        self.telemetry.record(RequestEvent(
            request_id=request_id,
            model=(result.model if result is not None else request.model) or self.engine.default_model,
            language=result.language if result is not None else request.language,
            outcome=outcome, result=result, answer_ms=answer.get("answer_ms"),
            speculation=answer.get("speculation", {}).get("outcome"),
        ))

"""The process: load the models, serve until SIGTERM/SIGINT, stop in order.

``run`` is ``python -m wyoming_amanuensis``; ``serve`` wires the pieces
around one :class:`~wyoming_amanuensis.server.AmanuensisServer`: MQTT
telemetry (started before listening, ``offline`` published after the last
transcript), zeroconf advertising, and the signal handlers that begin the
graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Optional, Union
from urllib.parse import urlparse

from . import __version__
from .config import Settings
from .model.ct2 import ModelFileError
from .model.loader import ModelNotFoundError
from .lifetime import EngineHost
from .memory import tune_malloc
from .pipeline import Engine
from .server import AmanuensisServer
from .telemetry import Telemetry

_LOG = logging.getLogger(__name__)


async def serve(settings: Settings, engine: Union[Engine, EngineHost], *, stop: Optional[asyncio.Event] = None,
                ready: Optional[asyncio.Future] = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT), then shut down gracefully."""
    telemetry = Telemetry(settings, encoder_backend=lambda: engine.encoder_backend,
                          models=list(engine.model_languages()), version=__version__,
                          backend_stats=engine.backend_stats, energy_status=engine.energy_status)
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
        with contextlib.suppress(Exception):
            await telemetry.stop()


def run(settings: Settings) -> int:
    """``python -m wyoming_amanuensis``: listen at once, load the models (in the background with
    --preload, else at the first request), serve until SIGTERM."""
    tune_malloc()
    try:
        host = EngineHost(settings)
    except (ModelNotFoundError, ModelFileError, ValueError) as err:
        _LOG.error("cannot load the model: %s", err)
        return 1
    try:
        failed = asyncio.run(_serve_loading(settings, host))
    except OSError as err:  # e.g. the port is taken
        _LOG.error("cannot serve on %s: %s", settings.uri, err)
        return 1
    finally:
        host.close()
    if failed:
        return 1
    _LOG.info("stopped")
    return 0


async def _serve_loading(settings: Settings, host: EngineHost) -> bool:
    """``serve`` with the background load started; True if that load failed (the server then
    stops: a model that cannot load is a configuration error, as it was before lazy loading)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failed: list[BaseException] = []

    def loaded(err: Optional[BaseException]) -> None:  # on the loading thread
        def note() -> None:
            if err is not None:
                _LOG.error("cannot load the model: %s", err)
                failed.append(err)
                stop.set()
        with contextlib.suppress(RuntimeError):  # the loop already closed: nobody to tell
            loop.call_soon_threadsafe(note)

    if settings.preload:
        host.start_loading(loaded)
    await serve(settings, host, stop=stop)
    return bool(failed)

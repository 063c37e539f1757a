"""When the models are in memory: loaded in the background, unloaded when idle.

:class:`EngineHost` stands where the server used to hold the
:class:`~wyoming_amanuensis.pipeline.Engine`: it answers what ``describe``
and request parsing need (model names and languages, read from the model's
small files) at once, and hands requests to the engine once it is there.
``--preload`` (default) starts loading in a background thread as the server
starts; otherwise the first request loads it. A request that arrives while
the engine loads waits for it. With ``--unload-after-s`` the engine is
dropped after that long without a request, its memory handed back to the
system, and the next request loads it again (timed in the log).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Union

from .config import Settings
from .cost import CostMeter, EnergyStatus
from .model.describe import model_languages
from .pipeline import Engine, TranscriptionError, return_freed_memory
from .request import Job
from .result import Result
from .runtime_choice import runtime_for

_LOG = logging.getLogger(__name__)


class EngineHost:
    """The engine's lifetime, behind the part of its interface the server uses."""

    def __init__(self, settings: Settings, load: Callable[..., Engine] = Engine.load):
        self.settings = settings
        self._load = load
        self.meter = CostMeter()  # one per process: every engine loaded here charges to it
        # Raises ModelNotFoundError/ModelFileError here, before the port opens, for a model
        # that is missing outright; a damaged model.bin is found by the load itself.
        self._languages = dict(model_languages(name) for name in settings.model_names())
        runtime_for(settings)  # RuntimeUnavailable, also before the port opens: torch asked for, not installed
        self.default_model = next(iter(self._languages))
        self._cond = threading.Condition()
        self._engine: Optional[Engine] = None
        self._loading = False
        self._error: Optional[BaseException] = None
        self._active = 0
        self._idle_since = time.monotonic()
        self._timer: Optional[threading.Timer] = None
        self._closed = False
        self.loads = 0
        self.unloads = 0
        self.last_load_s: Optional[float] = None

    # ------------------------------------------------------------ engine API
    def model_languages(self) -> dict[str, list[str]]:
        return dict(self._languages)

    @property
    def encoder_backend(self) -> str:
        engine = self._engine
        return engine.encoder_backend if engine is not None else self.settings.encoder_backend

    def backend_stats(self) -> Optional[dict]:
        engine = self._engine
        return engine.backend_stats() if engine is not None else None

    def energy_status(self) -> EnergyStatus:
        return self.meter.status

    def ready(self) -> None:
        """Return once the engine is loaded (loading it if nobody is), or its load failed
        (``run`` then reports why): the scheduler waits here before it times a run, so a
        load is not taken for engine time."""
        try:
            self._ensure_loaded()
        except Exception:  # noqa: BLE001 - run() reports it to every job
            pass

    def run(self, jobs: list[Job]) -> list[Union[Result, TranscriptionError]]:
        """``Engine.run``, after waiting for (or doing) the load."""
        try:
            engine = self._acquire()
        except Exception as err:  # noqa: BLE001 - the load failed: every job hears why
            return [TranscriptionError("model-unavailable", f"the model could not be loaded: {err}")] * len(jobs)
        try:
            return engine.run(jobs)
        finally:
            self._release()

    # ------------------------------------------------------------- lifetime
    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def start_loading(self, done: Optional[Callable[[Optional[BaseException]], None]] = None) -> threading.Thread:
        """Load in a background thread now (``--preload``); ``done`` is then called from that
        thread with None or the error the load raised."""
        thread = threading.Thread(target=self._load_quietly, args=(done,), name="amanuensis-load", daemon=True)
        thread.start()
        return thread

    def wait_loaded(self, timeout: Optional[float] = None) -> Engine:
        """The engine, waiting for a load in progress; raises what the load raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._engine is None:
                if self._error is not None:
                    raise self._error
                if not self._loading:
                    raise RuntimeError("the models are not loaded and no load is running")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("the models did not load in time")
                self._cond.wait(left)
            return self._engine

    def close(self) -> None:
        with self._cond:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def _load_quietly(self, done: Optional[Callable[[Optional[BaseException]], None]]) -> None:
        error: Optional[BaseException] = None
        try:
            self._ensure_loaded()
        except Exception as err:  # noqa: BLE001 - kept in self._error; whoever waits hears of it
            error = err
        if done is not None:
            done(error)

    def _ensure_loaded(self) -> Engine:
        with self._cond:
            while self._loading:
                self._cond.wait()
            if self._engine is not None:
                return self._engine
            self._loading, self._error = True, None
        t0 = time.perf_counter()
        engine: Optional[Engine] = None
        try:
            engine = self._load(self.settings, meter=self.meter)
        except BaseException as err:
            with self._cond:
                self._error = err
                raise
        finally:
            with self._cond:
                self._loading = False
                if engine is not None:
                    self._engine = engine
                    self.loads += 1
                    self.last_load_s = time.perf_counter() - t0
                self._cond.notify_all()
        _LOG.info("models ready to transcribe (%s; load %d took %.2f s)", ", ".join(self._languages),
                  self.loads, self.last_load_s)
        return engine

    def _acquire(self) -> Engine:
        with self._cond:
            self._active += 1
            engine = self._engine
        if engine is not None:
            return engine
        try:
            return self._ensure_loaded()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._idle_since = time.monotonic()
                self._arm_timer(self.settings.unload_after_s)

    def _arm_timer(self, delay: float) -> None:
        """(under the lock) Check for idleness ``delay`` seconds from now."""
        if delay <= 0 or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(delay, self._unload_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _unload_if_idle(self) -> None:
        limit = self.settings.unload_after_s
        with self._cond:
            if self._engine is None or self._active or self._loading or self._closed:
                return
            idle = time.monotonic() - self._idle_since
            if idle < limit:  # a request came and went since this timer was set
                self._arm_timer(limit - idle)
                return
            engine, self._engine = self._engine, None
            self.unloads += 1
        engine.close()
        del engine
        return_freed_memory()
        _LOG.info("models unloaded after %.0f s without a request; the next request loads them again", idle)

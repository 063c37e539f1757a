"""Bounded request queue in front of the engine, off the event loop.

One worker thread runs engine calls: torch already spreads one request over
every core, and the engine serialises requests anyway, so more workers would
only add contention. The event loop never runs inference; it only queues a
callable and awaits its future, so ``describe`` is answered while the worker
is busy.

Two kinds of work:

* **final** transcripts (a client sent ``audio-stop`` and waits). At most
  ``depth`` may wait; one more is refused with :class:`QueueFull` ("busy")
  so a burst waits instead of piling up audio without limit.
* **partial** transcripts (streaming previews). They only run when no final
  is waiting: a final entering the queue drops every waiting partial, and a
  partial is never dispatched while a final waits. They never delay anyone's
  result by more than the one partial decode that may already be running.

With batching on (``batch_size`` > 1 and a ``run_batch`` callable), finals
that carry a batch item and wait together are handed to ``run_batch`` as one
list (up to ``batch_size``): the engine decodes them in one batch. Each
caller still gets its own result, or its own exception.

A caller that goes away (its task is cancelled, e.g. the client vanished)
takes its job out of the queue; a job already running finishes in the worker
and its result is dropped. The scheduler knows nothing about audio or the
protocol: jobs are plain callables.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

_LOG = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFull(Exception):
    """More finals are waiting than the configured queue depth allows."""

    code = "busy"


class SchedulerClosed(Exception):
    """The scheduler is shutting down and takes no new work."""

    code = "shutting-down"


@dataclass
class _Job:
    fn: Callable[[], Any]
    partial: bool
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)
    batch_item: Any = None  # what run_batch takes in place of calling fn


class Scheduler:
    def __init__(self, depth: int, *, batch_size: int = 1,
                 run_batch: Optional[Callable[[list], list]] = None) -> None:
        if depth < 1:
            raise ValueError("queue depth must be at least 1")
        self.depth = depth
        self.batch_size = batch_size if run_batch is not None else 1
        self._run_batch = run_batch
        self._finals: deque[_Job] = deque()
        self._partials: deque[_Job] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amanuensis-engine")
        self._wake: Optional[asyncio.Event] = None
        self._idle: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._running: Optional[_Job] = None
        self._closed = False
        # Counters for logs and tests.
        self.finals_done = 0
        self.partials_done = 0
        self.partials_skipped = 0
        self.refused = 0
        self.batches = 0  # batched runs of more than one final

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._dispatch(), name="amanuensis scheduler")

    async def drain(self, timeout: Optional[float]) -> bool:
        """Wait until no final is waiting or running; True if that happened in time."""
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._wait_idle(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _wait_idle(self) -> None:
        assert self._idle is not None
        while self._finals or self._running is not None:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        """Refuse new work, drop what waits, let a running job end (its result is dropped)."""
        self._closed = True
        for queue in (self._finals, self._partials):
            while queue:
                job = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(SchedulerClosed("the server is shutting down"))
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # Do not wait for a decode still running in the worker: its result is unused.
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------- queries
    @property
    def finals_waiting(self) -> int:
        return sum(1 for j in self._finals if not j.future.done())

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def idle(self) -> bool:
        return self._running is None and not self._finals and not self._partials

    # ------------------------------------------------------------- submit
    async def run_final(self, fn: Callable[[], T], batch_item: Any = None) -> tuple[T, float]:
        """Run ``fn`` in the worker ahead of any partial; returns (result, ms it waited).
        With batching on, a ``batch_item`` lets it join other waiting finals in one run."""
        if self._closed:
            raise SchedulerClosed("the server is shutting down")
        if self.finals_waiting >= self.depth:
            self.refused += 1
            raise QueueFull(f"{self.depth} requests are already waiting for the engine; try again shortly")
        job = self._submit(fn, partial=False)
        job.batch_item = batch_item
        # Finals first: previews that have not started are dropped.
        while self._partials:
            p = self._partials.popleft()
            if not p.future.done():
                p.future.set_result(None)
                self.partials_skipped += 1
        return await self._await(job, self._finals)

    async def run_partial(self, fn: Callable[[], T]) -> Optional[tuple[T, float]]:
        """Run ``fn`` when no final is waiting; None when it was skipped."""
        if self._closed or self.finals_waiting or len(self._partials) >= self.depth:
            self.partials_skipped += 1
            return None
        job = self._submit(fn, partial=True)
        return await self._await(job, self._partials)

    def _submit(self, fn: Callable[[], Any], *, partial: bool) -> _Job:
        assert self._wake is not None, "Scheduler.start() was not called"
        job = _Job(fn=fn, partial=partial, future=asyncio.get_running_loop().create_future())
        (self._partials if partial else self._finals).append(job)
        self._wake.set()
        return job

    async def _await(self, job: _Job, queue: deque) -> Any:
        try:
            return await job.future
        except asyncio.CancelledError:
            # The caller went away: a job still waiting leaves the queue now.
            try:
                queue.remove(job)
            except ValueError:
                pass
            raise

    # ------------------------------------------------------------ dispatch
    def _next(self) -> Optional[_Job]:
        while self._finals:
            job = self._finals.popleft()
            if not job.future.done():
                return job
        while self._partials:
            job = self._partials.popleft()
            if not job.future.done():
                return job
        return None

    async def _dispatch(self) -> None:
        assert self._wake is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        while True:
            job = self._next()
            if job is None:
                self._idle.set()
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if job.batch_item is not None and self.batch_size > 1 and self._batchable_waiting():
                await self._dispatch_batch(loop, job)
                continue
            queue_ms = (time.perf_counter() - job.submitted) * 1000.0
            self._running = job
            try:
                result = await loop.run_in_executor(self._executor, job.fn)
            except asyncio.CancelledError:
                raise
            except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
                if not job.future.done():
                    job.future.set_exception(err)
            else:
                if not job.future.done():
                    job.future.set_result((result, queue_ms))
            finally:
                self._running = None
                if job.partial:
                    self.partials_done += 1
                else:
                    self.finals_done += 1
                if not self._finals:
                    self._idle.set()

    def _batchable_waiting(self) -> bool:
        return any(j.batch_item is not None and not j.future.done() for j in self._finals)

    async def _dispatch_batch(self, loop: asyncio.AbstractEventLoop, first: _Job) -> None:
        """Run ``first`` and the batchable finals waiting behind it as one engine call."""
        jobs = [first]
        for j in list(self._finals):
            if len(jobs) >= self.batch_size:
                break
            if j.batch_item is not None and not j.future.done():
                self._finals.remove(j)
                jobs.append(j)
        now = time.perf_counter()
        waits = [(now - j.submitted) * 1000.0 for j in jobs]
        _LOG.debug("decoding %d waiting requests in one batch", len(jobs))
        self._running = first
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, [j.batch_item for j in jobs])
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - every caller of the batch hears of it
            results = [err] * len(jobs)
        finally:
            self._running = None
            self.finals_done += len(jobs)
            self.batches += 1
        for job, result, queue_ms in zip(jobs, results, waits):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result((result, queue_ms))
        if not self._finals:
            self._idle.set()

"""Bounded request queue in front of the engine, off the event loop.

``workers`` threads run the engine (``--workers``, default 1: a lone
command gets every core through the runtime's own threads). With more, that many
runs go at once, each on its own threads (``Settings.cpu_threads``):
on a small CPU one thread per request and core computes more commands
per second than every core on one request, whose small decoder products do
not split well (benchmarks/bench_load.py). Whole requests side by side also
beat a pipeline (one request's encoder while another's decoder runs: 1.47x
against 1.68x in-process), whose slower stage, the encoder, sets its pace.
The event loop never runs inference; it only queues a
:class:`~wyoming_amanuensis.request.Job` and awaits its future, so
``describe`` is answered while the workers are busy.

Three kinds of work, one shape (a ``Job``, run by ``run(list_of_jobs)``), in this order of priority:

* **final** transcripts (a client sent ``audio-stop`` and waits). At most
  ``depth`` may wait; one more is refused with :class:`QueueFull` ("busy")
  so a burst waits instead of piling up audio without limit. With
  ``batch_size`` > 1, finals that wait together go to ``run`` as one list
  (up to ``batch_size``); each caller still gets its own result or error.
* **speculative** finals (:mod:`speculation`: a final started when the speech
  paused, before ``audio-stop``). They run only when no final waits, batched
  like finals; nothing is dropped for them, and :meth:`Scheduler.promote`
  moves one to the finals' queue when its client's ``audio-stop`` comes and it
  has not started yet. Cancelling the future :meth:`speculate` returned
  withdraws one that has not started.
* **partial** transcripts (streaming previews), one per run. They
  only run when no final or speculation is waiting: a final entering the queue drops every
  waiting partial, and a partial is never dispatched while a final waits.
  They never delay anyone's result by more than the one partial decode that
  may already be running.

A caller that goes away (its task is cancelled, e.g. the client vanished, or a
partial cancelled by its final) takes its job out of the queue; a job already
running is marked ``withdrawn`` and the engine drops it at its next stage or
token. Queue time is not measured here: the engine
stamps it into the result's timings from ``Job.submitted``. The engine time of
the run that carried a job is stamped on ``Job.run_ms`` (what speculation
spent, including runs whose result nobody used).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .request import Job

_LOG = logging.getLogger(__name__)

# run(jobs) returns, per job in order, its result or the exception it failed with.
RunFn = Callable[[list[Job]], Sequence[Any]]


class QueueFull(Exception):
    """More finals are waiting than the configured queue depth allows. ``retry_after_s``:
    when the queue is likely to have room again (see :meth:`Scheduler.retry_after_s`)."""

    code = "busy"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SchedulerClosed(Exception):
    """The scheduler is shutting down and takes no new work."""

    code = "shutting-down"


@dataclass(eq=False)  # identity: deque.remove must not compare the jobs' audio arrays
class _Queued:
    job: Job
    future: asyncio.Future


class Scheduler:
    # Per-final time assumed before any has run: a short command on a small CPU, base model.
    DEFAULT_PER_FINAL_S = 0.3

    def __init__(self, run: RunFn, depth: int, *, batch_size: int = 1, workers: int = 1,
                 ready: Optional[Callable[[], object]] = None) -> None:
        """``ready``: called in the worker before a run is timed, returns once the engine can
        run (its load is not engine time)."""
        if depth < 1:
            raise ValueError("queue depth must be at least 1")
        self.depth = depth
        self.batch_size = max(1, batch_size)
        self.workers = max(1, workers)
        self._run = run
        self._ready = ready
        self._finals: deque[_Queued] = deque()
        self._speculative: deque[_Queued] = deque()
        self._partials: deque[_Queued] = deque()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="amanuensis-engine")
        self._wake: Optional[asyncio.Event] = None
        self._idle: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._runs: set[asyncio.Task] = set()
        self._in_flight = 0  # runs in the workers
        self._closed = False
        # Recent engine time per final: a run's time shared out between its jobs and the runs
        # that went at the same time (an average over about the last 8).
        self._per_final_s = self.DEFAULT_PER_FINAL_S

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._dispatch(), name="amanuensis scheduler")

    async def drain(self, timeout: Optional[float]) -> bool:
        """Wait until no final is waiting or running; True if that happened in time."""
        try:
            await asyncio.wait_for(self._wait_idle(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _wait_idle(self) -> None:
        assert self._idle is not None
        while self._finals or self._in_flight:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        """Refuse new work, drop what waits, let a running job end (its result is dropped)."""
        self._closed = True
        for queue in (self._finals, self._speculative, self._partials):
            while queue:
                item = queue.popleft()
                if not item.future.done():
                    item.future.set_exception(SchedulerClosed("the server is shutting down"))
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
        return sum(1 for q in self._finals if not q.future.done())

    def retry_after_s(self) -> float:
        """Seconds until the finals now waiting (and the run in progress) are likely done:
        their count times the recent engine time per final, rounded up to a tenth."""
        load = self.finals_waiting + self._in_flight
        return max(0.1, -(-load * self._per_final_s * 10 // 1) / 10)

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    @property
    def idle(self) -> bool:
        return not self._in_flight and not self._finals and not self._speculative and not self._partials

    # ------------------------------------------------------------- submit
    async def run_final(self, job: Job) -> Any:
        """Run ``job`` ahead of any partial; its result, or the exception it failed with."""
        if self._closed:
            raise SchedulerClosed("the server is shutting down")
        if self.finals_waiting >= self.depth:
            wait = self.retry_after_s()
            raise QueueFull(f"{self.depth} requests are already waiting for the engine; retry after {wait:g} s", wait)
        item = self._submit(job, self._finals)
        # Finals first: previews that have not started are dropped.
        while self._partials:
            p = self._partials.popleft()
            if not p.future.done():
                p.future.set_result(None)
        return await self._await(item, self._finals)

    async def run_partial(self, job: Job) -> Optional[Any]:
        """Run ``job`` when no final is waiting; None when it was skipped."""
        if self._closed or self.finals_waiting or len(self._partials) >= self.depth:
            return None
        return await self._await(self._submit(job, self._partials), self._partials)

    def speculate(self, job: Job) -> Optional[asyncio.Future]:
        """Queue ``job`` below every final; its future (cancel it to withdraw the job),
        or None when the server is closing or ``depth`` speculations already wait."""
        if self._closed or sum(1 for q in self._speculative if not q.future.done()) >= self.depth:
            return None
        return self._submit(job, self._speculative).future

    def promote(self, future: asyncio.Future) -> bool:
        """A speculation whose client now waits for it: if it has not started, it joins
        the finals' queue (its client waits as any final would); False if it already
        ran, is running, or was withdrawn."""
        for item in self._speculative:
            if item.future is future and not future.done():
                self._speculative.remove(item)
                self._finals.append(item)
                self._wake.set()  # type: ignore[union-attr]
                return True
        return False

    def _submit(self, job: Job, queue: deque) -> _Queued:
        assert self._wake is not None, "Scheduler.start() was not called"
        item = _Queued(job, asyncio.get_running_loop().create_future())
        queue.append(item)
        self._wake.set()
        return item

    @staticmethod
    async def _await(item: _Queued, queue: deque) -> Any:
        try:
            return await item.future
        except asyncio.CancelledError:
            # The caller went away: a job still waiting leaves the queue now; a running one
            # stops at its next stage or token.
            item.job.withdrawn = True
            try:
                queue.remove(item)
            except ValueError:
                pass
            raise

    # ------------------------------------------------------------ dispatch
    def _take(self) -> list[_Queued]:
        """The next run: up to ``batch_size`` waiting finals, else speculations, else one partial."""
        batch: list[_Queued] = []
        for queue in (self._finals, self._speculative):
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if not item.future.done():
                    batch.append(item)
            if batch:
                return batch
        while not batch and self._partials:
            item = self._partials.popleft()
            if not item.future.done():
                batch.append(item)
        return batch

    async def _dispatch(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            batch = self._take() if self._in_flight < self.workers else []
            if not batch:
                if not self._in_flight:
                    self._idle.set()
                if self._closed:
                    break
                self._wake.clear()
                await self._wake.wait()  # new work, or a worker came free
                continue
            if len(batch) > 1:
                _LOG.debug("running %d waiting requests in one batch", len(batch))
            self._in_flight += 1
            run = asyncio.create_task(self._run_batch(batch), name="amanuensis engine run")
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)

    async def _run_batch(self, batch: list[_Queued]) -> None:
        assert self._wake is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        sharing = self._in_flight  # runs going at once, this one included
        t0 = time.perf_counter()
        try:
            outcomes, took = await loop.run_in_executor(self._executor, _timed, self._run, [q.job for q in batch],
                                                        self._ready)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - every caller of the batch hears of it
            outcomes, took = [err] * len(batch), time.perf_counter() - t0
        finally:
            self._in_flight -= 1
            self._wake.set()  # a worker is free
        for q in batch:
            q.job.run_ms = took * 1000.0
        if not batch[0].job.request.partial:
            self._per_final_s += (took / len(batch) / sharing - self._per_final_s) / 8
        for item, outcome in zip(batch, outcomes):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        if not self._finals and not self._in_flight:
            self._idle.set()


def _timed(run: RunFn, jobs: list[Job], ready: Optional[Callable[[], object]]) -> tuple[Sequence[Any], float]:
    """(run(jobs), seconds it took), measured in the worker after ``ready``: neither the
    event loop's own delay in noticing the result (a crowd's audio to parse) nor the model's
    load is engine time (a first request that waited seconds for the load made the busy
    hint 2.5x too long)."""
    if ready is not None:
        ready()
    t0 = time.perf_counter()
    out = run(jobs)
    return out, time.perf_counter() - t0

"""The scheduler in-process with a scripted engine: exact checks of priority, batching,
workers, cancellation, bounds and the retry hint, which a real engine makes slow or racy
(tests/test_server_load.py runs the real engine with several workers)."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from tests.test_server_unit import RATE, until
from wyoming_amanuensis.request import Job
from wyoming_amanuensis.scheduler import QueueFull, Scheduler, SchedulerClosed


class ScriptedRun:
    """``run(jobs)`` for the scheduler: each job's request_id names it; ``gate`` holds the
    workers; ``running`` counts the runs inside it at once (``most`` the most seen)."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.order: list[str] = []
        self.batches: list[list[str]] = []

    running = most = 0
    _count = threading.Lock()

    def __call__(self, jobs):
        with self._count:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self._run(jobs)
        finally:
            with self._count:
                self.running -= 1

    def _run(self, jobs):
        self.batches.append([j.request_id for j in jobs])
        out = []
        for job in jobs:
            if job.request_id.startswith("wait"):
                self.gate.wait(10)
            self.order.append(job.request_id)
            out.append(ValueError("boom") if job.request_id == "bad" else job.request_id)
        return out


async def held(**options) -> tuple[ScriptedRun, Scheduler]:
    """A started scheduler over a scripted engine whose gate is closed."""
    run = ScriptedRun()
    run.gate.clear()
    sched = Scheduler(run, **options)
    await sched.start()
    return run, sched


def job(name: str) -> Job:
    return Job(audio=np.zeros(1, dtype=np.float32), request_id=name)


async def test_scheduler_finals_before_partials():
    run, sched = await held(depth=4)
    first = asyncio.create_task(sched.run_final(job("wait-f0")))
    await until(lambda: sched.busy)
    p1 = asyncio.create_task(sched.run_partial(job("p1")))
    await asyncio.sleep(0.05)
    f1 = asyncio.create_task(sched.run_final(job("f1")))
    await asyncio.sleep(0.05)
    assert await sched.run_partial(job("p2")) is None  # a final waits: skipped at once
    run.gate.set()
    assert (await first, await f1) == ("wait-f0", "f1")
    assert await p1 is None  # dropped when f1 arrived
    assert run.order == ["wait-f0", "f1"]
    assert await sched.run_partial(job("p3")) == "p3"  # nothing waiting: partials run
    await sched.close()


async def test_scheduler_batches_finals_that_wait_together_and_each_gets_its_own_outcome():
    run, sched = await held(depth=8, batch_size=3)
    first = asyncio.create_task(sched.run_final(job("wait-0")))
    await until(lambda: sched.busy)
    waiting = [asyncio.create_task(sched.run_final(job(n))) for n in ("a", "bad", "b", "c")]
    await until(lambda: sched.finals_waiting == 4)
    run.gate.set()
    assert await first == "wait-0"
    assert await waiting[0] == "a"
    with pytest.raises(ValueError):
        await waiting[1]
    assert (await waiting[2], await waiting[3]) == ("b", "c")
    assert run.batches == [["wait-0"], ["a", "bad", "b"], ["c"]]
    await sched.close()


async def test_busy_retry_hint_is_the_queue_times_the_recent_time_per_final():
    def slow(jobs):  # 40 ms of engine time per job, batched or not
        time.sleep(0.04 * len(jobs))
        return [j.request_id for j in jobs]

    sched = Scheduler(slow, depth=1, batch_size=2)
    await sched.start()
    for _ in range(30):  # the running average forgets the assumed start value
        await sched.run_final(job("x"))
    per_final = sched._per_final_s
    assert 0.04 <= per_final < 0.1  # sleep overshoots on a loaded machine, never undershoots
    gate = threading.Event()
    sched._run = lambda jobs: (gate.wait(10), [j.request_id for j in jobs])[1]
    running = asyncio.create_task(sched.run_final(job("a")))
    await until(lambda: sched.busy)
    waiting = asyncio.create_task(sched.run_final(job("b")))
    await until(lambda: sched.finals_waiting == 1)
    with pytest.raises(QueueFull) as refused:
        await sched.run_final(job("c"))
    assert refused.value.retry_after_s == pytest.approx(math.ceil(2 * per_final * 10) / 10)  # one running, one waiting
    gate.set()
    assert [await running, await waiting] == ["a", "b"]
    await sched.close()


async def test_scheduler_depth_cancel_errors_and_close():
    run, sched = await held(depth=2)
    running = asyncio.create_task(sched.run_final(job("wait-a")))
    await until(lambda: sched.busy)
    waiting = asyncio.create_task(sched.run_final(job("b")))
    bad = asyncio.create_task(sched.run_final(job("bad")))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await sched.run_final(job("c"))
    waiting.cancel()  # its caller went away: it leaves the queue
    await asyncio.sleep(0.05)
    assert sched.finals_waiting == 1
    run.gate.set()
    assert await running == "wait-a"
    with pytest.raises(ValueError):
        await bad
    assert run.order == ["wait-a", "bad"]
    assert await sched.drain(5)
    run.gate.clear()
    blocked = asyncio.create_task(sched.run_final(job("wait-d")))
    await until(lambda: sched.busy)
    queued = asyncio.create_task(sched.run_final(job("e")))
    await asyncio.sleep(0.05)
    assert not await sched.drain(0.1)
    closing = asyncio.create_task(sched.close())
    with pytest.raises(SchedulerClosed):
        await queued
    run.gate.set()
    await closing
    await blocked
    with pytest.raises(SchedulerClosed):
        await sched.run_final(job("f"))


async def test_scheduler_speculations_run_below_finals_and_can_be_promoted_or_withdrawn():
    def big(name: str) -> Job:  # jobs that compare unequal-shaped arrays if the queue ever used ==
        return Job(audio=np.zeros(RATE + len(name), dtype=np.float32), request_id=name)

    run, sched = await held(depth=4)
    first = asyncio.create_task(sched.run_final(job("wait-f0")))
    await until(lambda: sched.busy)
    s1, s2, s3 = (sched.speculate(big(n)) for n in ("s1", "s22", "s333"))
    partial = asyncio.create_task(sched.run_partial(job("p")))
    f1 = asyncio.create_task(sched.run_final(big("f1")))
    f2 = asyncio.create_task(sched.run_final(big("f22")))
    await until(lambda: sched.finals_waiting == 2)
    f2.cancel()  # not the first in its queue: it leaves by identity
    await asyncio.sleep(0.05)
    assert sched.finals_waiting == 1
    s2.cancel()  # withdrawn before it started
    assert sched.promote(s3)  # its client now waits: it queues as a final, after f1
    run.gate.set()
    assert (await first, await f1, await s3, await s1) == ("wait-f0", "f1", "s333", "s1")
    assert await partial is None  # dropped when f1 arrived
    assert run.order == ["wait-f0", "f1", "s333", "s1"]
    assert not sched.promote(s1)  # it already ran
    await sched.close()
    assert sched.speculate(big("late")) is None  # a closing scheduler takes no speculation


async def test_workers_run_that_many_batches_at_once_finals_first():
    run, sched = await held(depth=8, workers=2)
    first = [asyncio.create_task(sched.run_final(job(n))) for n in ("wait-1", "wait-2")]
    await until(lambda: run.running == 2)
    later = asyncio.create_task(sched.run_final(job("f3")))
    partial = asyncio.create_task(sched.run_partial(job("p")))
    await asyncio.sleep(0.1)
    assert run.running == 2 and sched.finals_waiting == 1  # no third run while two go
    assert await partial is None  # a final waits: the preview is skipped
    run.gate.set()
    assert await asyncio.gather(*first, later) == ["wait-1", "wait-2", "f3"]
    assert run.most == 2
    assert await sched.drain(5) and sched.idle
    await sched.close()


async def test_one_worker_runs_one_batch_at_a_time():
    run, sched = await held(depth=8)
    tasks = [asyncio.create_task(sched.run_final(job(n))) for n in ("wait-1", "wait-2")]
    await until(lambda: run.running == 1)
    await asyncio.sleep(0.1)
    assert run.running == 1 and sched.finals_waiting == 1
    run.gate.set()
    assert await asyncio.gather(*tasks) == ["wait-1", "wait-2"]
    assert run.most == 1
    await sched.close()


async def test_retry_hint_shares_engine_time_between_runs_that_went_at_once():
    def slow(jobs):  # 80 ms per job, whoever else runs
        time.sleep(0.08 * len(jobs))
        return [j.request_id for j in jobs]

    sched = Scheduler(slow, depth=8, workers=2)
    await sched.start()
    for _ in range(15):  # pairs at once: each run's 80 ms carries two commands' worth of time
        await asyncio.gather(sched.run_final(job("x")), sched.run_final(job("y")))
    assert 0.035 <= sched._per_final_s < 0.065
    await sched.close()


async def test_closing_with_runs_in_every_worker_delivers_them_and_refuses_the_rest():
    run, sched = await held(depth=8, workers=2)
    going = [asyncio.create_task(sched.run_final(job(n))) for n in ("wait-1", "wait-2")]
    await until(lambda: run.running == 2)
    queued = asyncio.create_task(sched.run_final(job("f3")))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(sched.close())
    with pytest.raises(SchedulerClosed):
        await queued
    run.gate.set()
    await closing
    assert await asyncio.gather(*going) == ["wait-1", "wait-2"]


async def test_the_models_load_is_not_taken_for_engine_time():
    loaded = threading.Event()

    def ready():  # the first run waits for a 0.5 s load, as EngineHost.ready does
        if not loaded.is_set():
            time.sleep(0.5)
            loaded.set()

    def run(jobs):
        time.sleep(0.02)
        return [j.request_id for j in jobs]

    sched = Scheduler(run, depth=4, ready=ready)
    await sched.start()
    assert await sched.run_final(job("first")) == "first"
    assert loaded.is_set()
    # one run of 20 ms moved the average an eighth of the way from its assumed start
    start = Scheduler.DEFAULT_PER_FINAL_S
    assert sched._per_final_s == pytest.approx(start + (0.02 - start) / 8, abs=0.01)
    await sched.close()

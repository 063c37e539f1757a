"""Speculative finals: transcribe an utterance while its speaker is silent, so the answer is ready at ``audio-stop``.

A satellite streams in real time and its client (Home Assistant) waits out
0.25-1.25 s of silence before ``audio-stop``; until then a server would sit
idle. When the VAD (:mod:`vad`) has seen ``pause_s`` of silence after speech,
the trimmed window (up to a margin after the speech, :meth:`Utterance.window`) is
already what the final transcript will read unless the speaker goes on, so we
queue it below every waiting final (:meth:`Scheduler.speculate`). Then:

* speech resumes (the VAD confirms a new speech run): the speculation is
  withdrawn (dropped if it had not started; stopped at its next decoder
  token if it had, so the worker is soon free for someone's real final),
  and a new one starts at the next pause. At most one is live per utterance.
* the utterance ends (``audio-stop``, or the server's own endpoint) and its
  window is the speculation's: that result *is* the final, bit for bit what a
  final over the same window would give. ``hit``: it was already done;
  ``joined``: it was running and we wait for it; ``promoted``: it had not
  started and now queues as a final.
* the window differs (``miss``) or no speculation was made (``none``): the
  final runs as it would without speculation.

Every speculation's job keeps its ``run_ms`` (stamped by the scheduler), so
what speculation cost can be set against what it saved (:meth:`Speculator.work_ms`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Optional

from .request import Job
from .result import Result
from .scheduler import Scheduler

OUTCOMES = ("hit", "joined", "promoted", "miss", "none")
USED = ("hit", "joined", "promoted")  # the answer came from a speculation


@dataclass
class Speculation:
    window: tuple[int, int]  # samples of the utterance it transcribes
    runs: int  # the VAD's speech-run count when it started: a higher count means speech resumed
    job: Job
    future: asyncio.Future


def _retrieve(future: asyncio.Future) -> None:
    """A withdrawn speculation's error (e.g. the server closing) is nobody's: read it so asyncio does not warn."""
    if not future.cancelled():
        future.exception()


def _drop(spec: Speculation) -> None:
    """Out of the queue if it has not started; stopped at its next token if it has."""
    spec.job.withdrawn = True
    spec.future.cancel()


class Speculator:
    """One utterance's speculations."""

    def __init__(self, scheduler: Scheduler, pause_s: float) -> None:
        self._scheduler = scheduler
        self.pause_s = pause_s
        self.current: Optional[Speculation] = None
        self.jobs: list[Job] = []  # every job it queued, used or not
        self.outcome = "none"
        self.used: Optional[Job] = None

    def resumed(self, runs: int) -> None:
        """The VAD's speech-run count now: a speculation made before newer speech is withdrawn."""
        if self.current is not None and runs != self.current.runs:
            self.withdraw()

    def due(self, silence_s: float, speaking: bool) -> bool:
        return self.current is None and not speaking and silence_s >= self.pause_s

    def start(self, job: Job, window: tuple[int, int], runs: int) -> None:
        future = self._scheduler.speculate(job)
        if future is None:
            return  # closing, or the speculation queue is full: the final will run as usual
        future.add_done_callback(_retrieve)
        self.jobs.append(job)
        self.current = Speculation(window=window, runs=runs, job=job, future=future)

    def withdraw(self) -> None:
        if self.current is not None:
            _drop(self.current)
            self.current = None

    async def answer(self, window: tuple[int, int]) -> Optional[Result]:
        """The final's result if the live speculation covers ``window`` (waiting for it if
        needed; its error is the final's error), else None and the caller runs the final."""
        spec, self.current = self.current, None
        if spec is None:
            self.outcome = "miss" if self.jobs else "none"  # every speculation made was outrun by speech
            return None
        if spec.window != window or spec.future.cancelled():
            _drop(spec)
            self.outcome = "miss"
            return None
        if spec.future.done():
            self.outcome = "hit"
        else:
            self.outcome = "promoted" if self._scheduler.promote(spec.future) else "joined"
        self.used = spec.job
        try:
            return await spec.future
        except asyncio.CancelledError:  # our client left while we waited
            spec.job.withdrawn = True
            raise

    def work_ms(self) -> float:
        """Engine wall time of every speculation that ran (a run still going when asked is not counted)."""
        return sum(j.run_ms for j in self.jobs)

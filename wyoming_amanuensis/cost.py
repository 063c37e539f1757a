"""What a command costs: CPU seconds and, where the host exposes energy counters, joules.

**CPU** is the process's CPU time (``time.process_time``, every thread) over
each engine stage, charged to the request the stage ran for. Not the engine
thread's own ``time.thread_time``: torch runs the encoder's and decoder's
matrix work on its intra-op pool threads, which that clock never sees
(``benchmarks/bench_cost.py`` prints both). The price is that whatever the
event loop does at the same moment (VAD and resampling of audio still
arriving, network, MQTT) is charged to the request being computed. Stages
that overlap (``--workers`` 2 or more: two requests computed at once on two
threads) share what the process spends while they overlap evenly, so the
requests' costs still add up to the process's. A batched decode
(``--batch-decoding``) is one computation for several requests: its CPU is
split evenly between them.

**Energy** comes from Linux powercap RAPL counters
(``/sys/class/powercap/intel-rapl:N/energy_uj``, which AMD CPUs also use
since Linux 5.8), or failing those the older ``amd_energy`` hwmon driver's
socket counters. Only the ``package-N`` zones are summed (``psys`` and the
sub-zones overlap them; ``intel-rapl-mmio`` duplicates the package). They
measure the whole package, every process's work, so on a busy host a
request is charged for its neighbours too. Since Linux 5.10 (CVE-2020-8694,
"Platypus") ``energy_uj`` is readable by root only, and container runtimes
mask the counters by default; the meter says which rather than guessing. Counters wrap at ``max_energy_range_uj``: a reading
below the previous one has wrapped once (at a few hundred watts the range
lasts minutes, a stage lasts well under a second).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

_LOG = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")
HWMON = Path("/sys/class/hwmon")
# Top-level RAPL zones only ("intel-rapl:0", not the sub-zone "intel-rapl:0:1").
_TOP_ZONE = re.compile(r"^intel-rapl:\d+$")


class Charged(Protocol):
    """What a cost is added to: the request's ``result.Timings``."""

    cpu_s: float
    energy_j: Optional[float]


@dataclass(frozen=True)
class EnergyCounter:
    name: str                 # "package-0", "Esocket0"
    path: Path                # the microjoule counter file
    max_range_uj: Optional[int]  # where it wraps; None: a 64-bit accumulator that does not


@dataclass(frozen=True)
class EnergyStatus:
    available: bool
    source: Optional[str] = None  # which counters, when available
    reason: Optional[str] = None  # why not, when unavailable

    def as_dict(self) -> dict:
        return {"available": self.available, "source": self.source, "reason": self.reason}

    def describe(self) -> str:
        return f"energy from {self.source}" if self.available else f"energy unavailable: {self.reason}"


def _read_int(path: Path) -> int:
    with open(path, "rb") as f:
        return int(f.read().strip())


def _rapl_counters(powercap: Path) -> list[EnergyCounter]:
    zones = sorted(p for p in powercap.glob("intel-rapl:*") if _TOP_ZONE.match(p.name))
    counters = []
    for zone in zones:
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if not name.startswith("package"):
            continue
        try:
            max_range = _read_int(zone / "max_energy_range_uj")
        except (OSError, ValueError):
            max_range = None  # unknown range: a backwards step is then treated as a failed reading
        counters.append(EnergyCounter(name, zone / "energy_uj", max_range))
    return counters


def _amd_energy_counters(hwmon: Path) -> list[EnergyCounter]:
    counters = []
    for dev in sorted(hwmon.glob("hwmon*")):
        try:
            if (dev / "name").read_text().strip() != "amd_energy":
                continue
        except OSError:
            continue
        for label in sorted(dev.glob("energy*_label")):
            try:
                text = label.read_text().strip()
            except OSError:
                continue
            if text.startswith("Esocket"):
                counters.append(EnergyCounter(text, label.with_name(label.name.replace("_label", "_input")), None))
    return counters


class EnergyMeter:
    """The host's package energy counters, found once; :meth:`read` returns microjoules per counter."""

    def __init__(self, counters: Sequence[EnergyCounter], status: EnergyStatus) -> None:
        self.counters = tuple(counters)
        self.status = status
        self._failed = False

    @classmethod
    def detect(cls, powercap: Path = POWERCAP, hwmon: Path = HWMON) -> "EnergyMeter":
        """Find the counters and try each once, so that ``status`` says which it is:
        available, absent, or present but unreadable (and why)."""
        counters, kind = _rapl_counters(powercap), "powercap RAPL"
        if not counters:
            counters, kind = _amd_energy_counters(hwmon), "hwmon amd_energy"
        if not counters:
            listed = [p.name for p in powercap.glob("intel-rapl:*") if _TOP_ZONE.match(p.name)]
            if listed:
                # The links are there but lead nowhere: container runtimes mask
                # /sys/devices/virtual/powercap by default (Docker and containerd since 2024).
                return cls((), EnergyStatus(False, reason=f"powercap RAPL zones listed ({', '.join(sorted(listed))}) "
                                                          "but their package counters cannot be read (masked inside "
                                                          "a container, or no package zone)"))
            return cls((), EnergyStatus(False, reason="no RAPL package counters on this host "
                                                       f"(none in {powercap} or {hwmon})"))
        for c in counters:
            try:
                _read_int(c.path)
            except PermissionError:
                return cls((), EnergyStatus(False, reason=f"{kind} counters present but not readable by this user "
                                                          f"({c.path}: root-only since Linux 5.10, CVE-2020-8694; "
                                                          "grant read access to use them)"))
            except (OSError, ValueError) as err:
                return cls((), EnergyStatus(False, reason=f"{kind} counter {c.path} unreadable: {err}"))
        names = ", ".join(c.name for c in counters)
        return cls(counters, EnergyStatus(True, source=f"{kind} ({names})"))

    @property
    def available(self) -> bool:
        return bool(self.counters) and not self._failed

    def read(self) -> Optional[tuple[int, ...]]:
        if not self.available:
            return None
        try:
            return tuple(_read_int(c.path) for c in self.counters)
        except (OSError, ValueError) as err:
            self._give_up(f"reading failed: {err}")
            return None

    def joules(self, before: Optional[tuple[int, ...]], after: Optional[tuple[int, ...]]) -> Optional[float]:
        """Energy between two readings, each counter unwrapped once; None if either is missing."""
        if before is None or after is None:
            return None
        total = 0
        for c, b, a in zip(self.counters, before, after):
            delta = a - b
            if delta < 0:
                if c.max_range_uj is None:
                    self._give_up(f"{c.name} went backwards and its range is unknown")
                    return None
                delta += c.max_range_uj
            total += delta
        return total / 1e6

    def _give_up(self, why: str) -> None:
        if not self._failed:
            self._failed = True
            self.status = EnergyStatus(False, reason=why)
            _LOG.warning("energy counters given up: %s", why)


@dataclass(frozen=True)
class Reading:
    cpu_s: float
    energy_uj: Optional[tuple[int, ...]]


@dataclass(eq=False)  # identity: an open charge is removed by itself
class _Open:
    """A stage being charged, and its share so far of what the process spent."""

    shares: Sequence[Charged]
    cpu_s: float = 0.0
    joules: Optional[float] = 0.0


class CostMeter:
    """Charges CPU time and energy to requests (see the module docstring for what is counted)."""

    def __init__(self, energy: Optional[EnergyMeter] = None) -> None:
        self.energy = energy if energy is not None else EnergyMeter.detect()
        self._lock = threading.Lock()
        self._open: list[_Open] = []
        self._last: Optional[Reading] = None
        _LOG.info("cost per command: process CPU seconds; %s", self.energy.status.describe())

    def initial_energy(self) -> Optional[float]:
        """What a request's ``energy_j`` starts at: 0.0 when it will be measured, else None."""
        return 0.0 if self.energy.available else None

    @property
    def status(self) -> EnergyStatus:
        return self.energy.status

    def read(self) -> Reading:
        return Reading(time.process_time(), self.energy.read())

    @contextmanager
    def charge(self, shares: Sequence[Charged]) -> Iterator[None]:
        """What the block costs, split evenly between ``shares`` (one request, or a batch).
        While stages overlap (``--workers``: two requests on two threads) the
        process's CPU and energy in that time are split evenly between them, so no second
        is charged twice and the requests' costs still add up to the process's."""
        entry = _Open(shares)
        with self._lock:
            self._settle()
            self._open.append(entry)
        try:
            yield
        finally:
            with self._lock:
                self._settle()
                self._open.remove(entry)
            n = max(1, len(shares))
            for t in shares:
                t.cpu_s += entry.cpu_s / n
                # energy_j starts at 0.0 where counters exist and None where not; a stage
                # that could not be measured leaves it None rather than understated.
                if t.energy_j is not None:
                    t.energy_j = None if entry.joules is None else t.energy_j + entry.joules / n

    def _settle(self) -> None:
        """(under the lock) Share what the process spent since the last start or end of a
        charge between the charges open in that time."""
        now = self.read()
        last, self._last = self._last, now
        if last is None or not self._open:
            return
        k = len(self._open)
        cpu = max(0.0, now.cpu_s - last.cpu_s) / k
        joules = self.energy.joules(last.energy_uj, now.energy_uj)
        for entry in self._open:
            entry.cpu_s += cpu
            entry.joules = None if joules is None or entry.joules is None else entry.joules + joules / k

"""What a command costs (cost.py): CPU seconds on real transcriptions, and the energy reader.

This machine has no readable RAPL counters (no /sys/class/powercap at all), so
the energy side is tested at the file boundary: fake powercap and hwmon trees
in tmp_path laid out as the kernel lays them out, one of them driven by a
thread that advances the counter at a fixed power while the real engine runs.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.corpus import clips, normalize
from wyoming_amanuensis import cost
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.cost import CostMeter, EnergyMeter
from wyoming_amanuensis.pipeline import Engine
from wyoming_amanuensis.request import Job, Request
from wyoming_amanuensis.result import Timings

CLIPS = {c.name: c for c in clips()}
MAX_RANGE_UJ = 262143328850  # a real package zone's max_energy_range_uj


def zone(root: Path, directory: str, name: str, energy_uj: int, max_range: int = MAX_RANGE_UJ) -> Path:
    z = root / directory
    z.mkdir(parents=True)
    (z / "name").write_text(name + "\n")
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    return z / "energy_uj"


def set_counter(path: Path, value: int) -> None:
    """Replace the value atomically, as a read of sysfs never sees half a number."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def rapl_tree(root: Path) -> dict[str, Path]:
    """Two sockets with their sub-zones, the platform (psys) zone and the MMIO duplicate."""
    return {
        "pkg0": zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core0": zone(root, "intel-rapl:0/intel-rapl:0:0", "core", 500_000),
        "pkg1": zone(root, "intel-rapl:1", "package-1", 2_000_000),
        "psys": zone(root, "intel-rapl:2", "psys", 9_000_000),
        "mmio": zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000),
        "sub": zone(root, "intel-rapl:1:0", "dram", 7_000_000),
    }


def test_only_package_zones_are_summed(tmp_path):
    files = rapl_tree(tmp_path / "powercap")
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    assert meter.status.available and meter.status.reason is None
    assert [c.name for c in meter.counters] == ["package-0", "package-1"]
    assert "powercap RAPL" in meter.status.source and "package-1" in meter.status.source
    before = meter.read()
    set_counter(files["pkg0"], 1_250_000)
    set_counter(files["pkg1"], 2_500_000)
    for other in ("core0", "psys", "mmio", "sub"):  # overlapping zones move too, and must not count
        set_counter(files[other], 99_000_000)
    assert meter.joules(before, meter.read()) == pytest.approx(0.75)


def test_a_wrapped_counter_is_unwrapped(tmp_path):
    pkg = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", MAX_RANGE_UJ - 1000)
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    before = meter.read()
    set_counter(pkg, 500)  # passed max_energy_range_uj and started again from 0
    assert meter.joules(before, meter.read()) == pytest.approx(1500 / 1e6)
    assert meter.available


def test_a_counter_going_backwards_without_a_known_range_is_given_up(tmp_path):
    pkg = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 5_000_000)
    (pkg.parent / "max_energy_range_uj").unlink()
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    before = meter.read()
    set_counter(pkg, 10)
    assert meter.joules(before, meter.read()) is None
    assert not meter.available and "backwards" in meter.status.reason
    assert meter.read() is None


def test_no_counters_are_reported_as_unavailable(tmp_path):
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    assert not meter.status.available and "no RAPL" in meter.status.reason
    assert meter.read() is None
    assert meter.status.as_dict() == {"available": False, "source": None, "reason": meter.status.reason}


def test_zones_masked_by_a_container_runtime_are_reported_as_such(tmp_path):
    # Inside Docker the /sys/class/powercap links stay but /sys/devices/virtual/powercap is masked.
    (tmp_path / "powercap").mkdir()
    (tmp_path / "powercap" / "intel-rapl:0").symlink_to(tmp_path / "devices" / "virtual" / "powercap" / "intel-rapl:0")
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    assert not meter.status.available
    assert "intel-rapl:0" in meter.status.reason and "masked inside a container" in meter.status.reason


def test_root_only_counters_are_reported_as_unreadable(tmp_path, monkeypatch):
    pkg = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 1)
    pkg.chmod(0o400)  # what the kernel does since 5.10; root still reads it, so a non-root open is faked too
    real = cost._read_int

    def as_non_root(path: Path) -> int:
        if path == pkg and os.geteuid() == 0:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(cost, "_read_int", as_non_root)
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    assert not meter.status.available
    assert "not readable" in meter.status.reason and "root-only" in meter.status.reason
    assert str(pkg) in meter.status.reason
    assert meter.status.describe().startswith("energy unavailable: ")


def test_a_garbled_counter_is_reported_as_unreadable(tmp_path):
    pkg = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 1)
    pkg.write_text("n/a\n")
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    assert not meter.status.available and "unreadable" in meter.status.reason


def test_amd_energy_hwmon_sockets_when_powercap_has_none(tmp_path):
    dev = tmp_path / "hwmon" / "hwmon3"
    dev.mkdir(parents=True)
    (dev / "name").write_text("amd_energy\n")
    for i, (label, value) in enumerate([("Ecore000", 5), ("Esocket0", 3_000_000), ("Esocket1", 1_000_000)], 1):
        (dev / f"energy{i}_label").write_text(label + "\n")
        (dev / f"energy{i}_input").write_text(f"{value}\n")
    meter = EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon")
    assert meter.status.available and "amd_energy" in meter.status.source
    assert [c.name for c in meter.counters] == ["Esocket0", "Esocket1"]
    before = meter.read()
    set_counter(dev / "energy2_input", 3_400_000)
    assert meter.joules(before, meter.read()) == pytest.approx(0.4)


def test_charge_splits_cpu_and_energy_evenly_over_a_batch(tmp_path):
    pkg = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 0)
    meter = CostMeter(EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon"))
    shares = [Timings(energy_j=meter.initial_energy()) for _ in range(3)]
    unmeasured = Timings()  # energy_j None: never becomes a number
    t0 = time.process_time()
    with meter.charge(shares + [unmeasured]):
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
        set_counter(pkg, 6_000_000)
    spent = time.process_time() - t0
    assert all(t.energy_j == pytest.approx(1.5) for t in shares)
    assert unmeasured.energy_j is None
    assert all(t.cpu_s == pytest.approx(shares[0].cpu_s) for t in shares + [unmeasured])
    assert 0.2 / 4 <= shares[0].cpu_s <= spent / 4 + 1e-9


def test_overlapping_charges_share_the_process_time_instead_of_each_taking_all_of_it(tmp_path):
    """--workers 2: two requests' stages charged at the same time on two threads. The
    process CPU (and energy) of the overlap is split between them: the charges add up to
    what the process spent, where each used to be charged all of it."""
    pkg = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 0)
    meter = CostMeter(EnergyMeter.detect(tmp_path / "powercap", tmp_path / "hwmon"))
    a, b = Timings(energy_j=meter.initial_energy()), Timings(energy_j=meter.initial_energy())
    both_in = threading.Barrier(2)

    def stage(timings: Timings, cpu_s: float) -> None:
        with meter.charge([timings]):
            both_in.wait()
            deadline = time.process_time() + cpu_s
            while time.process_time() < deadline:
                pass
            both_in.wait()

    t0 = time.process_time()
    other = threading.Thread(target=stage, args=(b, 0.3))
    other.start()
    stage(a, 0.3)
    other.join()
    spent = time.process_time() - t0
    set_counter(pkg, 5_000_000)  # after both closed: charged to nobody
    assert a.cpu_s + b.cpu_s == pytest.approx(spent, rel=0.05)
    assert a.cpu_s == pytest.approx(b.cpu_s, rel=0.25)
    assert a.energy_j == 0.0 and b.energy_j == 0.0
    with meter.charge([a]):  # alone again: all of it
        set_counter(pkg, 7_000_000)
    assert a.energy_j == pytest.approx(2.0)


# ------------------------------------------------------------- the real engine
@pytest.fixture(scope="module")
def engine() -> Engine:
    e = Engine.load(settings_from(model="tiny.en", encoder_backend="cpu", threads=2))
    yield e
    e.close()


def audio(name: str) -> np.ndarray:
    return to_16k(*CLIPS[name].read())[0]


def test_cpu_seconds_of_a_real_transcription_are_plausible(engine):
    name = "s2p_gen_turn_on_the_lights"
    t0, c0 = time.perf_counter(), time.process_time()
    r = engine.transcribe(audio(name), 16000, Request(language="en"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert normalize(r.text) == normalize(CLIPS[name].reference)
    t = r.timings
    assert t.cpu_s > 0
    # Bounded by what the process spent in the call and by wall time on every core.
    assert t.cpu_s <= cpu + 1e-6 and t.cpu_s <= wall * os.cpu_count()
    # The stages are nearly all of the call: the rest is glue.
    assert t.cpu_s >= 0.5 * cpu
    assert r.as_dict()["timings"]["cpu_s"] == round(t.cpu_s, 3)
    # Without readable energy counters (this repository's test host): unknown, not zero.
    if not engine.energy_status().available:
        assert t.energy_j is None and r.as_dict()["timings"]["energy_j"] is None
    else:
        assert t.energy_j > 0


def test_a_batch_is_charged_once_between_its_requests(engine):
    names = ["s2p_gen_turn_on_the_lights", "s2p_gen_next_track", "living_room_light"]
    jobs = [Job(audio(n), Request(language="en")) for n in names]
    c0 = time.process_time()
    assert engine.settings.batch_decode_size >= len(jobs)  # greedy requests of one run share a decode
    batched = engine.run(jobs)
    cpu = time.process_time() - c0
    assert [normalize(r.text) for r in batched] == [normalize(CLIPS[n].reference) for n in names]
    charged = [r.timings.cpu_s for r in batched]
    assert all(c > 0 for c in charged)
    assert 0.5 * cpu <= sum(charged) <= cpu + 1e-6  # nothing counted twice


class PowerSupply(threading.Thread):
    """Advances a fake package counter at a fixed power, as the hardware would."""

    def __init__(self, path: Path, watts: float) -> None:
        super().__init__(daemon=True)
        self.path, self.watts = path, watts
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop.wait(0.001):
            set_counter(self.path, int((time.perf_counter() - t0) * self.watts * 1e6))


def test_energy_of_a_real_transcription_from_a_fake_counter(engine, tmp_path):
    pkg = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 0)
    metered = Engine(engine.settings, engine.models, CostMeter(EnergyMeter.detect(tmp_path / "powercap",
                                                                                  tmp_path / "hwmon")))
    assert metered.energy_status().available
    supply = PowerSupply(pkg, watts=20.0)
    supply.start()
    try:
        r = metered.transcribe(audio("s2p_gen_next_track"), 16000, Request(language="en"))
    finally:
        supply.stop.set()
        supply.join()
    t = r.timings
    stages_s = (t.mel_ms + t.encoder_ms + t.decoder_ms + t.alignment_ms + t.names_ms) / 1000.0
    # 20 W over the stages' wall time, give or take the supply's steps (1 ms, more on a loaded host).
    assert t.energy_j == pytest.approx(20.0 * stages_s, rel=0.25, abs=0.1)
    assert t.energy_j > 0 and t.cpu_s > 0

"""Whole server processes for the memory and start-up benchmarks: launch one (Amanuensis or
wyoming-faster-whisper on the same base weights, see ``bench_wyoming``), talk to it as a
Wyoming client over TCP, and read its memory from /proc."""

from __future__ import annotations

import socket
import subprocess
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import read_event, write_event
from wyoming.info import Describe

from benchmarks.bench_wyoming import ROOT, amanuensis_argv, faster_whisper_argv, free_port


@dataclass
class Launched:
    name: str
    proc: subprocess.Popen
    port: int
    t0: float  # time.monotonic() just before the launch

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch(system: str, threads: int, model_dir: Path, data_dir: Path, log: Path, extra: tuple = ()) -> Launched:
    """``system``: "amanuensis" or "wyoming-faster-whisper" (greedy both, language en)."""
    port = free_port()
    if system == "amanuensis":
        argv = amanuensis_argv(port, 1, threads) + ["--language", "en", *extra]
    else:
        argv = faster_whisper_argv(port, 1, threads, model_dir, data_dir) + list(extra)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    return Launched(system, proc, port, t0)


def _exchange(port: int, events: list, until: str, timeout: float) -> Optional[object]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        f = sock.makefile("rwb")
        for event in events:
            write_event(event, f)
        f.flush()
        while True:
            event = read_event(f)
            if event is None or event.type == until or event.type == "error":
                return event


def wait_describe(server: Launched, timeout: float = 300.0, poll_s: float = 0.02) -> float:
    """Seconds from launch until the port answered describe."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}")
        try:
            event = _exchange(server.port, [Describe().event()], "info", 5)
            if event is not None and event.type == "info":
                return time.monotonic() - server.t0
        except OSError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"{server.name}: no describe answer in {timeout:.0f} s")


def read_wav(path: Path) -> tuple[bytes, int, int, int]:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate(), w.getsampwidth(), w.getnchannels()


def transcribe(port: int, wav: Path, timeout: float = 300.0) -> str:
    """One utterance over a fresh connection; the transcript's text."""
    pcm, rate, width, channels = read_wav(wav)
    step = 1024 * width * channels
    events = [Transcribe(language="en").event(), AudioStart(rate=rate, width=width, channels=channels).event()]
    events += [AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i:i + step]).event()
               for i in range(0, len(pcm), step)]
    events.append(AudioStop().event())
    event = _exchange(port, events, "transcript", timeout)
    if event is None or event.type != "transcript":
        raise RuntimeError(f"no transcript from port {port}: {event}")
    return str(event.data.get("text", ""))


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak so far) of a process, MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out

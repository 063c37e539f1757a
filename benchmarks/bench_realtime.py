"""Latency as a Home Assistant user feels it: commands streamed in real time, then quiet noise.

    .venv/bin/python -m benchmarks.bench_realtime [--limit N] [--mode a|b|ab] [--corpus DIR]

A satellite streams a command as it is spoken and Home Assistant's VAD waits
out a stretch of silence before it sends ``audio-stop``; only then does a
server that relies on that VAD start working. This client does the same to
Amanuensis and to wyoming-faster-whisper (same bundled base weights, each
server's own default beam, language ``en``), interleaved clip by clip in one
run so both see the same machine:

* **mode A** (Home Assistant's VAD): the clip in 1024-sample chunks at real-time
  pace, then ``--trailing-s`` (0.7 s, Home Assistant's default) of quiet room
  noise, then ``audio-stop``. Latency = ``audio-stop`` sent -> transcript read.
* **mode B** (server endpointing): the clip, then noise at real-time pace until
  the server answers (at most ``--max-noise-s``). Latency = end of the clip's
  audio sent -> transcript read, so it includes the server's own silence wait.
  Only servers that say ``requires_external_vad: false`` take part;
  wyoming-faster-whisper runs with ``--vad-endpointing 0.7`` there.

Prints p50 / p95 latency and WER (Whisper's English normaliser) per server
and mode. The noise is fixed (seeded) pink-ish noise at ``--noise-dbfs`` RMS.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from benchmarks.bench_engine import materialise_model
from benchmarks.bench_wyoming import MODEL, faster_whisper_argv, free_port, server
from benchmarks.corpus import CORPUS_DIR, clips, wer
from wyoming_amanuensis.audio import to_16k

RATE = 16000
CHUNK = 1024


def room_noise(seconds: float, dbfs: float, seed: int = 7) -> np.ndarray:
    """Pink-ish noise (white through a one-pole low-pass): closer to a quiet room than white."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * RATE))
    pink = np.empty_like(white)
    acc = 0.0
    for i, w in enumerate(white):  # a few seconds of audio: a plain loop is fast enough
        acc = 0.97 * acc + w
        pink[i] = acc
    pink -= pink.mean()
    return (pink / np.sqrt(np.mean(pink ** 2)) * 10 ** (dbfs / 20)).astype(np.float32)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()


@dataclass
class Server:
    name: str
    port: int
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {"a": [], "b": []})
    texts: dict[str, list[str]] = field(default_factory=lambda: {"a": [], "b": []})


async def describe(port: int) -> Info:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        while True:
            event = await client.read_event()
            if event is not None and Info.is_type(event.type):
                return Info.from_event(event)


async def one(port: int, speech: np.ndarray, noise: np.ndarray, *, stop_after_noise: bool) -> tuple[str, float]:
    """Stream speech then noise at real-time pace; returns (text, ms from the reference instant).

    The reference instant is ``audio-stop`` (mode A) or the end of the speech (mode B)."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            while True:
                event = await client.read_event()
                if event is None:
                    if not got.done():
                        got.set_exception(ConnectionError("server closed the connection"))
                    return
                if Transcript.is_type(event.type) and not got.done():
                    got.set_result((Transcript.from_event(event).text, time.perf_counter()))
                elif event.type == "error" and not got.done():
                    got.set_exception(RuntimeError(event.data.get("text")))

        reading = asyncio.create_task(reader())
        audio = np.concatenate((speech, noise))
        t0 = time.perf_counter()
        speech_end = t0 + len(speech) / RATE
        for i in range(0, len(audio), CHUNK):
            if got.done():
                break  # mode B: the server answered; stop sending (a real satellite would)
            await asyncio.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm16(audio[i:i + CHUNK])).event())
        reference = time.perf_counter() if stop_after_noise else speech_end
        await client.write_event(AudioStop().event())
        try:
            text, at = await asyncio.wait_for(got, 120)
        finally:
            reading.cancel()
        return text, (at - reference) * 1000.0


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run(servers: list[Server], corpus: list, mode: str, args: argparse.Namespace) -> None:
    noise = room_noise(args.trailing_s if mode == "a" else args.max_noise_s, args.noise_dbfs)
    for k, clip in enumerate(corpus):
        speech = to_16k(*clip.read())[0]
        order = servers[k % len(servers):] + servers[:k % len(servers)]  # rotate who goes first
        for s in order:
            text, ms = await one(s.port, speech, noise, stop_after_noise=mode == "a")
            s.texts[mode].append(text)
            s.latency_ms[mode].append(ms)
        print(f"{mode.upper()} {k + 1}/{len(corpus)} {clip.name}: "
              + ", ".join(f"{s.name} {s.latency_ms[mode][-1]:.0f} ms" for s in servers), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    ap.add_argument("--limit", type=int, default=0, help="first N clips only")
    ap.add_argument("--mode", default="a", help="a, b or ab (see the module docstring)")
    ap.add_argument("--trailing-s", type=float, default=0.7, help="mode A: noise before audio-stop")
    ap.add_argument("--max-noise-s", type=float, default=5.0, help="mode B: most noise sent while waiting")
    ap.add_argument("--noise-dbfs", type=float, default=-55.0)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each server")
    ap.add_argument("--fw-beam", type=int, default=0, help="wyoming-faster-whisper beam (0: its default, 5 on x86)")
    args = ap.parse_args(argv)
    corpus = clips(args.corpus)[: args.limit or None]
    servers = [Server("amanuensis", 0), Server("wyoming-faster-whisper", 0)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = materialise_model(MODEL, tmp / "model")
        for mode in args.mode:
            # One pair of servers per mode: wyoming-faster-whisper endpoints by itself only in mode B.
            ours, theirs = servers[0], servers[1]
            ours.port, theirs.port = free_port(), free_port()
            argv_ours = [sys.executable, "-m", "wyoming_amanuensis", "--uri", f"tcp://127.0.0.1:{ours.port}",
                         "--model", MODEL, "--threads", str(args.threads)]
            argv_theirs = faster_whisper_argv(theirs.port, args.fw_beam, args.threads, model_dir, tmp / "data")
            if mode == "b":
                argv_theirs += ["--vad-endpointing", str(args.trailing_s)]
            with server(argv_ours, ours.port, tmp / f"amanuensis-{mode}.log"), \
                    server(argv_theirs, theirs.port, tmp / f"fw-{mode}.log"):
                taking_part = [s for s in servers
                               if mode == "a" or asyncio.run(describe(s.port)).asr[0].requires_external_vad is False]
                asyncio.run(run(taking_part, corpus, mode, args))
    refs = [c.reference for c in corpus]
    print(f"\n{len(corpus)} clips from {args.corpus}, noise {args.noise_dbfs:g} dBFS, trailing {args.trailing_s:g} s, "
          f"{args.threads} threads each, real-time pace")
    print("| server | mode | p50 ms | p95 ms | mean ms | WER |\n|---|---|---|---|---|---|")
    for mode in args.mode:
        for s in servers:
            lat = s.latency_ms[mode]
            if not lat:
                print(f"| {s.name} | {mode.upper()} | n/a (needs requires_external_vad: false) | | | |")
                continue
            print(f"| {s.name} | {mode.upper()} | {p(lat, 50):.0f} | {p(lat, 95):.0f} | {statistics.mean(lat):.0f} | "
                  f"{100 * wer(refs, s.texts[mode]):.1f} % |")
    a, b = servers
    if a.latency_ms["a"] and b.latency_ms["a"]:
        print(f"\nmode A, amanuensis / wyoming-faster-whisper: p50 {p(a.latency_ms['a'], 50) / p(b.latency_ms['a'], 50):.3f}, "
              f"p95 {p(a.latency_ms['a'], 95) / p(b.latency_ms['a'], 95):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

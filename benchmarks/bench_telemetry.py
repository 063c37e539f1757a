"""Transcript latency with MQTT telemetry on vs off, in one run.

    .venv/bin/python -m benchmarks.bench_telemetry                  # tiny.en, 8 clips x 5 rounds
    .venv/bin/python -m benchmarks.bench_telemetry --model base --rounds 10 --json out.json
    .venv/bin/python -m benchmarks.bench_telemetry --aa            # control: both servers without telemetry

Two server processes of the same build and flags, one with telemetry to a
local Mosquitto (started here, as the tests do), one without. Requests go to
them alternately, one at a time, with the order flipped every round, so
drift (thermal, other load) falls on both sides equally. Latency is what a
Home Assistant client waits for: from writing ``audio-stop`` to reading the
``transcript``. Afterwards the retained stats message on the broker must
count every request sent to the telemetry server: proof that it really was
publishing. Needs the ``mosquitto`` binary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import wave
from pathlib import Path

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from benchmarks.corpus import SHORT_COMMAND_S, clips
from tests.conftest import ServerProcess, start_server
from tests.mqtt_broker import MosquittoBroker, Subscriber


async def latency_ms(server: ServerProcess, path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        pcm = w.readframes(w.getnframes())
    async with AsyncTcpClient(server.host, server.port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        step = 1024 * width * channels
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=rate, width=width, channels=channels,
                                                audio=pcm[i:i + step]).event())
        t0 = time.perf_counter()
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 120)
            if event is None or event.type == "error":
                raise RuntimeError(f"no transcript from {server.uri}: {event and event.data}")
            if Transcript.is_type(event.type):
                return (time.perf_counter() - t0) * 1000.0


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "median_ms": round(statistics.median(values), 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
            "mean_ms": round(statistics.fmean(values), 1), "stdev_ms": round(statistics.pstdev(values), 1)}


async def run(args: argparse.Namespace, tmp: Path) -> dict:
    corpus = [c for c in clips() if c.seconds <= SHORT_COMMAND_S][: args.clips]
    broker = MosquittoBroker(tmp / "broker").start()
    model_args = ("--model", args.model, "--encoder-backend", "cpu", "--threads", str(args.threads))
    servers: dict[str, ServerProcess] = {}
    try:
        mqtt = ("--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--instance", "bench")
        servers["on"] = start_server(() if args.aa else mqtt, log_path=tmp / "on.log", model_args=model_args)
        servers["off"] = start_server((), log_path=tmp / "off.log", model_args=model_args)
        for name in ("on", "off"):  # warm-up: first-call allocations are not what a user waits for twice
            for clip in corpus[:2]:
                await latency_ms(servers[name], clip.path)
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for clip in corpus:
                for name in order:
                    latencies[name].append(await latency_ms(servers[name], clip.path))
        # Read back only now (the retained stats), so no subscriber shares the CPU while measuring.
        expected = 2 + len(latencies["on"])
        counted = None
        if not args.aa:
            async with Subscriber(broker, "amanuensis/bench/stats") as sub:
                with contextlib.suppress(AssertionError):  # a shortfall is reported, not raised
                    await sub.wait_for(lambda s: any(p["requests"] == expected for p in s.json_on("#")), timeout=10)
            counted = max((p["requests"] for p in sub.json_on("#")), default=0)
    finally:
        for server in servers.values():
            server.stop()
        broker.kill()
    on, off = summary(latencies["on"]), summary(latencies["off"])
    # Paired by request (same clip, same round, back to back): removes most of the
    # drift that separate medians carry.
    diffs = [a - b for a, b in zip(latencies["on"], latencies["off"])]
    half_ci = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5
    return {"aa_control": args.aa,
            "paired_diff_ms": {"median": round(statistics.median(diffs), 2), "mean": round(statistics.fmean(diffs), 2),
                               "mean_95ci": [round(statistics.fmean(diffs) - half_ci, 2),
                                             round(statistics.fmean(diffs) + half_ci, 2)]},
            "model": args.model, "threads": args.threads, "clips": len(corpus), "rounds": args.rounds,
            "telemetry_on": on, "telemetry_off": off, "ratio_on_off": round(on["median_ms"] / off["median_ms"], 3),
            "telemetry_requests_counted": counted, "requests_sent": expected}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clips", type=int, default=8, help="first N short clips of the corpus")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server (requests never overlap)")
    ap.add_argument("--aa", action="store_true",
                    help="control run: telemetry off on both servers, to see how far two identical servers differ")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    on, off = result["telemetry_on"], result["telemetry_off"]
    if args.aa:
        print("A/A CONTROL: telemetry is OFF on both servers ('on' is just the first one)")
    print(f"model {result['model']}, {result['clips']} clips x {result['rounds']} rounds, "
          f"{result['threads']} thread(s) per server, requests alternating between the two servers")
    for label, s in (("telemetry on ", on), ("telemetry off", off)):
        print(f"  {label}: median {s['median_ms']:8.1f} ms   p90 {s['p90_ms']:8.1f} ms   "
              f"mean {s['mean_ms']:8.1f} ms   stdev {s['stdev_ms']:6.1f} ms   (n={s['n']})")
    d = result["paired_diff_ms"]
    print(f"  ratio on/off (medians): {result['ratio_on_off']:.3f}")
    print(f"  paired difference on-off: median {d['median']:+.1f} ms, mean {d['mean']:+.1f} ms "
          f"(95% CI {d['mean_95ci'][0]:+.1f} .. {d['mean_95ci'][1]:+.1f} ms)")
    if not args.aa:
        print(f"  requests counted by the telemetry (retained stats on the broker): "
              f"{result['telemetry_requests_counted']} of {result['requests_sent']} sent to that server")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

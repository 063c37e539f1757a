"""Throughput without losing latency (issue 13, item 2): many clients at once.

    .venv/bin/python -m benchmarks.bench_load [--threads 1] [--clients 8] [--configs default;batch;workers2]
        [--burst 50] [--depths 16,64] [--limit N] [--keep-logs DIR]

Every system is its own server process (bundled base weights, language en,
``--threads`` threads), started alone, measured, stopped:

* **anchor**: wyoming-faster-whisper (wfw, beam 5 as it runs on x86), ONE client
  streaming the clips in real time (clip, 0.7 s of room noise, ``audio-stop``,
  as Home Assistant sends them): its p50 from ``audio-stop`` to transcript is
  the bound for Amanuensis' loaded p95.
* **load** (per Amanuensis config): ``--clients`` clients, client k starting
  k x ``--stagger-s`` after the first, each streaming its share of the clips
  in real time back to back (their commands overlap); meanwhile a probe asks
  ``describe`` every 0.25 s. p50/p95/max latency from ``audio-stop``,
  per-client worst p95 and count (nobody starved), describe max.
* **saturation** (per system): the clips sent as fast as the connection takes
  them (no pacing, no noise) by one client, one after the other
  (sequential), then by ``--clients`` clients at once: commands per second
  and the ratio concurrent / sequential.
* **burst** (Amanuensis, ``--burst-config``, per ``--depths``): ``--burst``
  commands at the same instant: how many got ``busy`` (and their
  ``retry_after_s``), and the slowest answer.

Configs: ``default`` (the server's defaults), ``batch`` (``--batch-decoding``,
``--batch-decode-size 8``), ``workers2`` (``--workers 2``: two commands computed
at once, each on ``--threads`` torch threads), ``nospec`` (``--no-speculate``), or
``name:--flag,--flag value`` for any other.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from benchmarks.bench_engine import materialise_model
from benchmarks.bench_realtime import CHUNK, RATE, cpu_s, one, pcm16, room_noise
from benchmarks.bench_wyoming import MODEL, faster_whisper_argv, free_port, server
from benchmarks.corpus import SHORT_COMMAND_S, clips, normalize, wer
from wyoming_amanuensis.audio import to_16k

WFW = "wyoming-faster-whisper"
CONFIGS = {"default": [], "batch": ["--batch-decoding", "--batch-decode-size", "8"], "nospec": ["--no-speculate"],
           "workers2": ["--workers", "2"]}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@contextmanager
def started(system: str, flags: list[str], args: argparse.Namespace, logs: Path, model_dir: Path,
            data_dir: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    if system == WFW:
        argv = faster_whisper_argv(port, 5, args.threads, model_dir, data_dir)
    else:
        argv = [sys.executable, "-m", "wyoming_amanuensis", "--uri", f"tcp://127.0.0.1:{port}", "--model", MODEL,
                "--threads", str(args.threads), *flags]
    name = system.replace(" ", "_").replace("/", "_")
    with server(argv, port, logs / f"{name}.log") as proc:
        yield port, proc.pid


async def unpaced(port: int, speech: np.ndarray) -> tuple[Optional[dict], float, Optional[dict]]:
    """One command sent as fast as possible -> (transcript data or None, seconds, error data or None)."""
    t0 = time.perf_counter()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        pcm = pcm16(speech)
        step = CHUNK * 2
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[i:i + step]).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 300)
            if event is None:
                return None, time.perf_counter() - t0, {"code": "closed"}
            if Transcript.is_type(event.type):
                return dict(event.data or {}), time.perf_counter() - t0, None
            if event.type == "error":
                return None, time.perf_counter() - t0, dict(event.data or {})


async def warm(port: int, speech: np.ndarray) -> None:
    for _ in range(2):
        await unpaced(port, speech)


async def real_time_load(port: int, items: list, noise: np.ndarray, clients: int, stagger_s: float) -> dict:
    rows: list[dict] = []
    describe_s: list[float] = []
    done = asyncio.Event()

    async def client(k: int) -> None:
        await asyncio.sleep(k * stagger_s)
        for name, ref, speech in items[k::clients]:
            try:
                data, _, stop, at = await one(port, speech, noise)
                rows.append({"client": k, "ms": (at - stop) * 1000.0, "text": data.get("text", ""), "ref": ref})
            except Exception as err:  # noqa: BLE001
                rows.append({"client": k, "ms": None, "error": f"{type(err).__name__}: {err}", "ref": ref})

    async def probe() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            async with AsyncTcpClient("127.0.0.1", port) as c:
                await c.write_event(Describe().event())
                while True:
                    event = await asyncio.wait_for(c.read_event(), 30)
                    if event is not None and Info.is_type(event.type):
                        break
            describe_s.append(time.perf_counter() - t0)
            await asyncio.sleep(0.25)

    probing = asyncio.create_task(probe())
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    done.set()
    await probing
    return {"rows": rows, "describe_s": describe_s, "wall_s": wall}


async def lone_real_time(port: int, items: list, noise: np.ndarray) -> list[dict]:
    rows = []
    for name, ref, speech in items:
        data, _, stop, at = await one(port, speech, noise)
        rows.append({"ms": (at - stop) * 1000.0, "text": data.get("text", ""), "ref": ref})
    return rows


async def saturation(port: int, items: list, clients: int) -> tuple[float, float, list[dict]]:
    """(sequential commands/s, concurrent commands/s, concurrent rows)."""
    t0 = time.perf_counter()
    for _, _, speech in items:
        await unpaced(port, speech)
    sequential = len(items) / (time.perf_counter() - t0)
    rows: list[dict] = []

    async def client(k: int) -> None:
        for _, ref, speech in items[k::clients]:
            data, seconds, error = await unpaced(port, speech)
            rows.append({"text": (data or {}).get("text", ""), "ref": ref, "s": seconds, "error": error})

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return sequential, len(items) / (time.perf_counter() - t0), rows


async def burst(port: int, speech: np.ndarray, n: int) -> list[tuple[Optional[dict], float, Optional[dict]]]:
    return await asyncio.gather(*(unpaced(port, speech) for _ in range(n)))


def wer_of(rows: list[dict]) -> float:
    ok = [r for r in rows if r.get("ms", 0) is not None and not r.get("error")]
    return wer([normalize(r["ref"]) for r in ok], [normalize(r["text"]) for r in ok])


def parse_configs(spec: str) -> dict[str, list[str]]:
    out = {}
    for part in spec.split(";"):
        name, _, flags = part.partition(":")
        out[name] = CONFIGS[name] if not flags and name in CONFIGS else [f for f in flags.replace(",", " ").split()]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--stagger-s", type=float, default=0.4)
    ap.add_argument("--trailing-s", type=float, default=0.7)
    ap.add_argument("--noise-dbfs", type=float, default=-60.0)
    ap.add_argument("--configs", default="default;batch;workers2", help="';'-separated; see the module doc")
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--depths", default="16,64")
    ap.add_argument("--burst-config", default="batch", help="the config (of --configs) the burst runs against")
    ap.add_argument("--limit", type=int, default=0, help="first N clips only (0 = all)")
    ap.add_argument("--anchor-clips", type=int, default=24, help="clips for wfw's lone-client figure")
    ap.add_argument("--keep-logs", type=Path)
    args = ap.parse_args(argv)
    corpus = clips()[:args.limit or None]
    items = [(c.name, c.reference, to_16k(*c.read())[0]) for c in corpus]
    noise = room_noise(args.trailing_s, args.noise_dbfs)
    configs = parse_configs(args.configs)
    logs = args.keep_logs or Path(tempfile.mkdtemp(prefix="bench_load_"))
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = materialise_model(MODEL, Path(tmp) / "model")
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        results = asyncio.run(run_all(args, items, noise, configs, logs, model_dir, data_dir))
    report(args, items, configs, results)
    return 0


async def run_all(args, items, noise, configs, logs, model_dir, data_dir) -> dict:
    results: dict = {"load": {}, "sat": {}, "burst": {}, "cpu": {}}
    with started(WFW, [], args, logs, model_dir, data_dir) as (port, pid):
        await warm(port, items[0][2])
        results["anchor"] = await lone_real_time(port, items[:args.anchor_clips], noise)
        print(f"anchor: {len(results['anchor'])} lone real-time commands", flush=True)
        results["sat"][WFW] = await saturation(port, items, args.clients)
        print(f"{WFW}: saturation done", flush=True)
    for name, flags in configs.items():
        with started(name, flags, args, logs, model_dir, data_dir) as (port, pid):
            await warm(port, items[0][2])
            c0 = cpu_s(pid)
            results["load"][name] = await real_time_load(port, items, noise, args.clients, args.stagger_s)
            results["cpu"][name] = (cpu_s(pid) - c0) / len(items)
            print(f"{name}: real-time load done", flush=True)
            results["sat"][name] = await saturation(port, items, args.clients)
            print(f"{name}: saturation done", flush=True)
    speech = next(sp for _, _, sp in items if len(sp) <= SHORT_COMMAND_S * RATE)
    for depth in [int(d) for d in args.depths.split(",") if d]:
        flags = [*configs.get(args.burst_config, []), "--queue-depth", str(depth)]
        with started(f"depth{depth}", flags, args, logs, model_dir, data_dir) as (port, _):
            await warm(port, speech)
            results["burst"][depth] = await burst(port, speech, args.burst)
            print(f"burst against --queue-depth {depth} done", flush=True)
    return results


def report(args, items, configs, results) -> None:
    anchor = [r["ms"] for r in results["anchor"]]
    anchor_p50 = pct(anchor, 50)
    print(f"\nbase model, {len(items)} clips, --threads {args.threads}, {args.clients} clients, language en")
    print(f"anchor: {WFW} (beam 5), one client in real time, {len(anchor)} commands: "
          f"audio-stop -> transcript p50 {anchor_p50:.0f} ms, p95 {pct(anchor, 95):.0f} ms, WER {wer_of(results['anchor']):.3f}")
    print(f"\n{args.clients} clients streaming in real time (stagger {args.stagger_s:g} s), audio-stop -> transcript:")
    print(f"{'config':<10} {'n':>4} {'err':>4} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'p95/anchor p50':>15} "
          f"{'worst client p95':>17} {'min/client':>10} {'describe max ms':>16} {'WER':>6} {'CPU s/cmd':>9}")
    for name, load in results["load"].items():
        ok = [r["ms"] for r in load["rows"] if r["ms"] is not None]
        per_client = defaultdict(list)
        for r in load["rows"]:
            if r["ms"] is not None:
                per_client[r["client"]].append(r["ms"])
        worst = max(pct(v, 95) for v in per_client.values())
        least = min(len(per_client[k]) for k in range(args.clients))
        errors = len(load["rows"]) - len(ok)
        print(f"{name:<10} {len(ok):>4} {errors:>4} {pct(ok, 50):>7.0f} {pct(ok, 95):>7.0f} {max(ok):>7.0f} "
              f"{pct(ok, 95) / anchor_p50:>15.3f} {worst:>17.0f} {least:>10} {max(load['describe_s']) * 1000:>16.0f} "
              f"{wer_of(load['rows']):>6.3f} {results['cpu'][name]:>9.3f}")
    print(f"\nsaturation: {len(items)} commands unpaced, 1 client one after another vs {args.clients} at once:")
    print(f"{'system':<24} {'sequential/s':>12} {'concurrent/s':>12} {'ratio':>6} {'vs wfw seq':>10} {'errors':>6} {'WER':>6}")
    wfw_seq = results["sat"][WFW][0]
    for name, (seq, conc, rows) in results["sat"].items():
        errors = sum(1 for r in rows if r["error"])
        print(f"{name:<24} {seq:>12.2f} {conc:>12.2f} {conc / seq:>6.2f} {conc / wfw_seq:>10.2f} {errors:>6} "
              f"{wer_of(rows):>6.3f}")
    print(f"\nburst: {args.burst} commands of one short clip at once, config {args.burst_config}:")
    print(f"{'--queue-depth':>13} {'ok':>4} {'busy':>5} {'retry_after_s min..max':>23} {'slowest ok s':>12}")
    for depth, outs in results["burst"].items():
        ok = [s for data, s, err in outs if data is not None]
        busy = [err.get("retry_after_s") for _, _, err in outs if err and err.get("code") == "busy"]
        hints = [h for h in busy if h is not None]
        span = f"{min(hints):.1f}..{max(hints):.1f}" if hints else "-"
        print(f"{depth:>13} {len(ok):>4} {len(busy):>5} {span:>23} {max(ok) if ok else float('nan'):>12.2f}")


if __name__ == "__main__":
    sys.exit(main())

"""Latency as a Home Assistant user feels it: commands streamed in real time (issue 10's figures).

    .venv/bin/python -m benchmarks.bench_realtime [--mode a|b|c|abc] [--systems NAME,...] [--limit N]
        [--clients 8] [--stagger-s 0.4] [--json FILE] [--keep-logs DIR]

A satellite streams a command as it is spoken; Home Assistant's VAD waits out some silence,
then sends ``audio-stop``. This client plays the satellite to these systems, each its own
server process (bundled base weights, each server's default beam, ``--threads`` threads,
language ``en``; ``--systems`` picks some, comma-separated, default all):

  amanuensis              defaults: VAD trimming and speculative finals
  amanuensis-nospec       ``--no-speculate``: the same trimming, the final computed at audio-stop
  amanuensis-untrimmed    ``--no-vad-trim --no-speculate``: the server before issue 10
  wyoming-faster-whisper  (wfw)

Audio goes in 1024-sample chunks at real-time pace (the chunk at sample i is sent at
t0 + i/16000), then seeded pink-ish noise at ``--noise-dbfs``. Modes A and B interleave
the systems clip by clip (who goes first rotates), so all see the same machine.

* **A** (Home Assistant's VAD): the clip, ``--trailing-s`` (0.7 s, HA's default) of noise,
  ``audio-stop``. Latency = ``audio-stop`` sent -> transcript read; ratio to wfw's p50/p95
  (issue 10: at most 0.02 / 0.05); "!= nospec" = clips whose normalised words differ
  from amanuensis-nospec's (issue 10: WER no worse than it).
* **B** (server endpointing): every server runs with ``--vad-endpointing <trailing-s>`` and
  the transcribe event says ``vad_sensitivity: default``; the clip, then noise until the
  server answers (at most ``--max-noise-s``, then ``audio-stop``). Latency counts from the
  END OF SPEECH: when the chunk holding the clip's last speech sample n was sent (n from
  ``bench_vad.energy_end`` on the clean clip, as many clips end in silence; that is t0 +
  n/16000 less 0-64 ms, as a chunk leaves when its first sample is due). "cut" =
  latency < 0.1 s (the server ended before the speech did); "no end" = never endpointed
  (answered after ``audio-stop``); over the other clips: "compute" = latency - trailing-s
  (issue 10: within 0.1 s) and "end err" (amanuensis) = its ``ended_at_s`` - trailing-s -
  the reference end.
* **C** (concurrency): ``--clients`` clients, client k starting k * ``--stagger-s`` after
  the first and running clips k, k+N, k+2N... back to back, mode A style, against
  amanuensis and then amanuensis-nospec (one at a time, same schedule): p50/p95/max
  latency, WER, and every clip where speculation answered > 50 ms later than nospec
  (issue 10: with 8 real-time clients nobody's final is later than without speculation).

Speculation table (amanuensis, from the transcript's extra fields): outcome counts; hit
rate = (hit + joined + promoted) / all; work ratio = sum(work_ms) / sum(used_ms) and the
median per-utterance ratio (engine ms of the utterance's speculations and final / ms of the
run that answered); runs per utterance; the server's ``answer_ms``. "CPU s/clip" = the
server process' user + system CPU over the mode after one warm-up request, per clip.
``--json FILE`` writes every per-clip row (with the transcript event's data). Server logs
are scanned for warnings and errors at the end; ``--keep-logs DIR`` keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from benchmarks.bench_engine import materialise_model
from benchmarks.bench_vad import energy_end
from benchmarks.bench_wyoming import MODEL, faster_whisper_argv, free_port, server
from benchmarks.corpus import CORPUS_DIR, clips, normalize, wer
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.speculation import OUTCOMES, USED

RATE, CHUNK = 16000, 1024
WFW = "wyoming-faster-whisper"
AMANUENSIS = {"amanuensis": [], "amanuensis-nospec": ["--no-speculate"],
              "amanuensis-untrimmed": ["--no-vad-trim", "--no-speculate"]}
SYSTEMS = [*AMANUENSIS, WFW]
CONCURRENT = ("amanuensis", "amanuensis-nospec")  # mode C
CUT_MS, LATER_MS = 100.0, 50.0
BENIGN = re.compile(r"npu encoder backend unavailable")  # this host has no NPU: said once at start


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


@dataclass(frozen=True)
class Item:
    name: str
    ref: str
    speech: np.ndarray  # 16 kHz float32
    end_s: float  # reference end of speech (energy rule on the clean clip)


async def describe(port: int) -> Info:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        while True:
            event = await client.read_event()
            if event is not None and Info.is_type(event.type):
                return Info.from_event(event)


async def one(port: int, speech: np.ndarray, noise: np.ndarray, *, sensitivity: Optional[str] = None,
              pace: bool = True) -> tuple[dict, list[float], float, float]:
    """Stream speech then noise, then ``audio-stop``; sending stops early once the transcript
    comes (server endpointing: a real satellite would). -> (transcript data, when each chunk
    was sent, audio-stop sent, transcript read), perf_counter seconds."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en", vad_sensitivity=sensitivity).event())
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
                    got.set_result((dict(event.data or {}), time.perf_counter()))
                elif event.type == "error" and not got.done():
                    got.set_exception(RuntimeError((event.data or {}).get("text")))

        reading = asyncio.create_task(reader())
        audio = np.concatenate((speech, noise))
        t0, sent = time.perf_counter(), []
        for i in range(0, len(audio), CHUNK):
            if got.done():
                break
            if pace:
                await asyncio.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
            sent.append(time.perf_counter())
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm16(audio[i:i + CHUNK])).event())
        stop = time.perf_counter()
        await client.write_event(AudioStop().event())
        try:
            data, at = await asyncio.wait_for(got, 120)
        finally:
            reading.cancel()
        return data, sent, stop, at


async def measure(mode: str, system: str, port: int, item: Item, noise: np.ndarray, base: Optional[float] = None,
                  **extra) -> dict:
    """One request -> its row; a failed one (error event, closed connection, 120 s) is a row with "error".
    ``base``: mode C's start, for the row's start_s."""
    row = {"mode": mode, "system": system, "clip": item.name, "ref": item.ref, "text": "", "latency_ms": None,
           "clip_s": len(item.speech) / RATE, "speech_end_s": item.end_s, **extra, "data": {}}
    try:
        data, sent, stop, at = await one(port, item.speech, noise, sensitivity="default" if mode == "b" else None)
    except Exception as err:  # noqa: BLE001
        return {**row, "error": f"{type(err).__name__}: {err}"}
    t0, last = (sent or [stop])[0], max(0, round(item.end_s * RATE) - 1) // CHUNK  # last: holds the speech's end
    # Mode B: from the end of speech (a cut clip's answer may come before that chunk is sent); else audio-stop.
    ref_t = (sent[last] if last < len(sent) else t0 + last * CHUNK / RATE) if mode == "b" else stop
    return {**row, "text": data.get("text", ""), "latency_ms": (at - ref_t) * 1000.0, "answered_before_stop": at <= stop,
            **({"start_s": round(t0 - base, 3)} if base is not None else {}), "data": data}


async def interleaved(mode: str, ports: dict[str, int], items: list[Item], args: argparse.Namespace) -> list[dict]:
    """Modes A and B: each clip to every system in turn, who goes first rotating."""
    noise = room_noise(args.trailing_s if mode == "a" else args.max_noise_s, args.noise_dbfs)
    names, rows = list(ports), []
    for k, item in enumerate(items):
        got = {}
        for name in names[k % len(names):] + names[:k % len(names)]:
            got[name] = await measure(mode, name, ports[name], item, noise)
        rows += [got[n] for n in names]
        print(f"{mode.upper()} {k + 1}/{len(items)} {item.name}: "
              + ", ".join(f"{n} {f(got[n]['latency_ms'])} ms" for n in names), flush=True)
    return rows


async def concurrent(system: str, port: int, items: list[Item], args: argparse.Namespace) -> list[dict]:
    """Mode C: ``--clients`` staggered clients, each through its share of the clips back to back."""
    noise, rows = room_noise(args.trailing_s, args.noise_dbfs), []
    base = time.perf_counter()

    async def client(k: int) -> None:
        await asyncio.sleep(k * args.stagger_s)
        for item in items[k::args.clients]:
            rows.append(await measure("c", system, port, item, noise, base, client=k))

    await asyncio.gather(*(client(k) for k in range(args.clients)))
    print(f"C {system}: {len(rows)} clips from {args.clients} clients in {time.perf_counter() - base:.1f} s", flush=True)
    return rows


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def servers(names: list[str], mode: str, args: argparse.Namespace, logs: Path,
            model_dir: Optional[Path], data_dir: Path) -> Iterator[dict[str, tuple[int, int]]]:
    """name -> (port, pid), every server ready; stopped on exit."""
    with ExitStack() as stack:
        out = {}
        for name in names:
            port = free_port()
            if name == WFW:
                argv = faster_whisper_argv(port, args.fw_beam, args.threads, model_dir, data_dir)
            else:
                argv = [sys.executable, "-m", "wyoming_amanuensis", "--uri", f"tcp://127.0.0.1:{port}",
                        "--model", MODEL, "--threads", str(args.threads), *AMANUENSIS[name]]
            if mode == "b":
                argv += ["--vad-endpointing", f"{args.trailing_s:g}"]
            out[name] = (port, stack.enter_context(server(argv, port, logs / f"{mode}-{name}.log")).pid)
        yield out


# ------------------------------------------------------------------ report
def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def f(x: Optional[float], fmt: str = ".0f") -> str:
    return "-" if x is None or x != x else format(x, fmt)


def table(header: list[str], lines: list[list]) -> None:
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for line in lines:
        print("| " + " | ".join(map(str, line)) + " |")


def by_system(rows: list[dict], mode: str) -> dict[str, dict[str, dict]]:
    """system -> clip -> row, for one mode (systems and clips in run order)."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["mode"] == mode:
            out.setdefault(r["system"], {})[r["clip"]] = r
    return out


def lat(rs: dict[str, dict]) -> list[float]:
    return [r["latency_ms"] for r in rs.values() if r["latency_ms"] is not None]  # failed requests: see "errors"


def wer_of(rs: dict[str, dict]) -> str:
    return f"{100 * wer([r['ref'] for r in rs.values()], [r['text'] for r in rs.values()]):.1f} %"


def report_a(rows: list[dict], cpu: dict[str, float]) -> None:
    sys_rows = by_system(rows, "a")
    wfw, nospec = sys_rows.get(WFW), sys_rows.get("amanuensis-nospec")
    lines = []
    for name, rs in sys_rows.items():
        ms = lat(rs)
        differ = (sum(normalize(r["text"]) != normalize(nospec[c]["text"]) for c, r in rs.items())
                  if nospec and name != "amanuensis-nospec" else "-")
        lines.append([name, len(ms), f(p(ms, 50)), f(p(ms, 95)), f(mean(ms)), wer_of(rs), differ,
                      f(p(ms, 50) / p(lat(wfw), 50), ".3f") if wfw else "-",
                      f(p(ms, 95) / p(lat(wfw), 95), ".3f") if wfw else "-", f(cpu[name] / len(rs), ".2f")])
    print("\n### Mode A: latency after audio-stop\n")
    table(["system", "n", "p50 ms", "p95 ms", "mean ms", "WER", "!= nospec", "p50 / wfw", "p95 / wfw",
           "CPU s/clip"], lines)


def report_b(rows: list[dict], cpu: dict[str, float], silence_ms: float) -> None:
    lines = []
    for name, rs in by_system(rows, "b").items():
        ms = lat(rs)
        # Clips the server cut or never endpointed say nothing about its compute: listed apart.
        ok = [r for r in rs.values() if r.get("answered_before_stop") and r["latency_ms"] >= CUT_MS]
        compute = [r["latency_ms"] - silence_ms for r in ok]
        ends = [1000 * (r["data"]["ended_at_s"] - r["speech_end_s"]) - silence_ms for r in ok if "ended_at_s" in r["data"]]
        lines.append([name, len(ms), f(p(ms, 50)), f(p(ms, 95)), f(p(compute, 50)), f(p(compute, 95)),
                      wer_of(rs), sum(m < CUT_MS for m in ms), sum(r.get("answered_before_stop") is False for r in rs.values()),
                      f(p(ends, 50)) if ends else "-", f(cpu[name] / len(rs), ".2f")])
    print(f"\n### Mode B: end of speech to transcript, server endpointing after {silence_ms / 1000:g} s\n")
    table(["system", "n", "p50 ms", "p95 ms", "compute p50 ms", "compute p95 ms", "WER", "cut",
           "no end", "end err p50 ms", "CPU s/clip"], lines)


def report_c(rows: list[dict], cpu: dict[str, float], args: argparse.Namespace) -> None:
    sys_rows = by_system(rows, "c")
    lines = [[name, args.clients, len(lat(rs)), f(p(lat(rs), 50)), f(p(lat(rs), 95)), f(p(lat(rs), 100)),
              f(mean(lat(rs))), wer_of(rs), f(cpu[name] / len(rs), ".2f")] for name, rs in sys_rows.items()]
    print(f"\n### Mode C: {args.clients} concurrent real-time clients (stagger {args.stagger_s:g} s), "
          "latency after audio-stop\n")
    table(["system", "clients", "n", "p50 ms", "p95 ms", "max ms", "mean ms", "WER", "CPU s/clip"], lines)
    spec, nospec = sys_rows.get("amanuensis"), sys_rows.get("amanuensis-nospec")
    if spec and nospec:
        later = [(c, r, nospec[c]) for c, r in spec.items()
                 if c in nospec and None not in (r["latency_ms"], nospec[c]["latency_ms"])
                 and r["latency_ms"] - nospec[c]["latency_ms"] > LATER_MS]
        print(f"\nClips where amanuensis answered > {LATER_MS:g} ms later than amanuensis-nospec: {len(later)} "
              f"of {len(spec)}")
        if later:  # start s: when the clip's first chunk went, from the first client's start
            table(["clip", "client", "start s", "speculation ms", "outcome", "runs", "nospec ms"],
                  [[c, r["client"], r.get("start_s"), f(r["latency_ms"]), r["data"].get("speculation", {}).get("outcome"),
                    r["data"].get("speculation", {}).get("runs"), f(n["latency_ms"])]
                   for c, r, n in sorted(later, key=lambda t: t[1]["latency_ms"] - t[2]["latency_ms"], reverse=True)])


def report_speculation(rows: list[dict], modes: str) -> None:
    lines = []
    for mode in modes:
        for name, rs in by_system(rows, mode).items():
            if name == WFW:
                continue
            specs = [r["data"]["speculation"] for r in rs.values() if "speculation" in r["data"]]
            answer = [r["data"]["answer_ms"] for r in rs.values() if "answer_ms" in r["data"]]
            hits = [r["data"]["answer_ms"] for r in rs.values()
                    if r["data"].get("speculation", {}).get("outcome") in USED]
            counts = Counter(s["outcome"] for s in specs)
            used = sum(s["used_ms"] for s in specs)
            per = [s["work_ms"] / s["used_ms"] for s in specs if s["used_ms"] > 0]
            lines.append([mode.upper(), name, *(counts[o] if specs else "-" for o in OUTCOMES),
                          f"{100 * sum(counts[o] for o in USED) / len(specs):.0f} %" if specs else "-",
                          f(sum(s["work_ms"] for s in specs) / used, ".2f") if used else "-",
                          f(p(per, 50), ".2f") if per else "-",
                          f(mean([s["runs"] for s in specs]), ".2f") if specs else "-",
                          f(p(answer, 50), ".1f"), f(p(answer, 95), ".1f"), f(p(hits, 50), ".1f")])
    print("\n### Speculation and server-side answer time (transcript fields)\n")
    table(["mode", "system", *OUTCOMES, "hit rate", "work/used (sum)", "work/used (median)", "runs/utt",
           "answer_ms p50", "answer_ms p95", "answer_ms p50 (used)"], lines)


def scan_logs(logs: Path) -> list[str]:
    out = []
    for log in sorted(logs.glob("*.log")):
        bad = [line for line in log.read_text(errors="replace").splitlines()
               if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Exception", line) and not BENIGN.search(line)]
        out.append(f"- {log.name}: {len(bad)} warning/error lines" + "".join(f"\n    {b[:200]}" for b in bad[:5]))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    ap.add_argument("--limit", type=int, default=0, help="first N clips only")
    ap.add_argument("--mode", default="a", help="any of a, b, c, e.g. abc (see the module docstring)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS))
    ap.add_argument("--trailing-s", type=float, default=0.7, help="mode A/C: noise before audio-stop; mode B: "
                    "the servers' --vad-endpointing silence")
    ap.add_argument("--max-noise-s", type=float, default=5.0, help="mode B: most noise sent while waiting")
    ap.add_argument("--noise-dbfs", type=float, default=-55.0)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each server")
    ap.add_argument("--fw-beam", type=int, default=0, help="wyoming-faster-whisper beam (0: its default, 5 on x86)")
    ap.add_argument("--clients", type=int, default=8, help="mode C: concurrent clients")
    ap.add_argument("--stagger-s", type=float, default=0.4, help="mode C: client k starts k * this after the first")
    ap.add_argument("--json", type=Path, help="write every per-clip row here")
    ap.add_argument("--keep-logs", type=Path, help="keep the server logs in this directory")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    if unknown := set(names) - set(SYSTEMS) or set(args.mode) - set("abc"):
        ap.error(f"unknown system or mode: {', '.join(sorted(unknown))}")
    speeches = [(clip, to_16k(*clip.read())[0]) for clip in clips(args.corpus)[: args.limit or None]]
    items = [Item(clip.name, clip.reference, speech, energy_end(speech)) for clip, speech in speeches]
    rows: list[dict] = []
    cpu: dict[str, dict[str, float]] = {}  # mode -> system -> CPU s
    load, started = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        logs = args.keep_logs or tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        model_dir = materialise_model(MODEL, tmp / "model") if WFW in names else None
        for mode in args.mode:
            taking = [n for n in names if mode != "c" or n in CONCURRENT]
            if not taking:
                print(f"mode {mode.upper()}: none of {', '.join(CONCURRENT)} selected, skipped")
                continue
            with servers(taking, mode, args, logs, model_dir, tmp / "data") as procs:
                ports = {n: port for n, (port, _) in procs.items()}
                for n, port in ports.items():
                    info = asyncio.run(describe(port))
                    if mode == "b" and info.asr[0].requires_external_vad is not False:
                        raise SystemExit(f"{n} still says requires_external_vad with --vad-endpointing")
                    asyncio.run(one(port, items[0].speech, room_noise(1.0, args.noise_dbfs), pace=False))  # warm-up
                before = {n: cpu_s(pid) for n, (_, pid) in procs.items()}
                if mode == "c":
                    for n in taking:
                        rows += asyncio.run(concurrent(n, ports[n], items, args))
                else:
                    rows += asyncio.run(interleaved(mode, ports, items, args))
                cpu[mode] = {n: cpu_s(pid) - before[n] for n, (_, pid) in procs.items()}
        log_lines = scan_logs(logs)

    print(f"\n{len(items)} clips from {args.corpus}, noise {args.noise_dbfs:g} dBFS, trailing / endpointing "
          f"{args.trailing_s:g} s, {args.threads} threads per server, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} before / {os.getloadavg()[0]:.2f} after, {(time.time() - started) / 60:.1f} min, real-time pace")
    if "a" in cpu:
        report_a(rows, cpu["a"])
    if "b" in cpu:
        report_b(rows, cpu["b"], 1000 * args.trailing_s)
    if "c" in cpu:
        report_c(rows, cpu["c"], args)
    if any(n in AMANUENSIS for n in names):
        report_speculation(rows, "".join(m for m in args.mode if m in cpu))
    print("\nServer logs" + (f" (kept in {args.keep_logs})" if args.keep_logs else "") + ":\n" + "\n".join(log_lines))
    if errors := [r for r in rows if "error" in r]:
        print(f"\n{len(errors)} failed requests (no latency; empty text in WER):")
        print("\n".join(f"- {r['mode'].upper()} {r['system']} {r['clip']}: {r['error']}" for r in errors))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cpu_s": cpu,
                                         "rows": rows}, indent=1))
        print(f"\nrows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

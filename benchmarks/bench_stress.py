"""The real server under stress, in its own process: fuzz, a crowd, vanishing clients, a soak.

    .venv/bin/python -m benchmarks.bench_stress --threads 1                 # everything (about 10 minutes)
    .venv/bin/python -m benchmarks.bench_stress --threads 1 --phases fuzz --fuzz-frames 2000

Phases (``--phases``, comma-separated; all by default):

``fuzz``      at least ``--fuzz-frames`` fuzzed frames (benchmarks/fuzz_frames.py, the
              property test's strategies) over many connections, sent by several
              threads at once; between batches a ``describe`` (its latency) and a
              real corpus transcription (its words) are checked. Nothing may be
              lost: every connection gets only whole, well-formed events of the
              kinds the server sends and is let go, the server stays up.
``crowd``     ``--clients`` clients at once, each with a different corpus clip,
              compared with the same clip sent alone: no cross-talk; counts of
              ok / busy / other errors (the server's own queue depth decides).
``vanish``    ``--vanishing`` clients that open, send part of an utterance and vanish
              (half close politely, half reset); server fds and RSS before and after.
``soak``      ``--soak`` sequential requests over the corpus; RSS every 100 requests,
              growth per 100 after ``--warmup`` requests; words checked.
``capacity``  one client sends the short clips back to back (commands per second
              on ``--threads`` cores), then ``--clients`` at once (saturation); the
              same for wyoming-faster-whisper (bundled base weights, int8, same
              threads), measured in this run, and the ratio.

Each system runs in its own process (the real ``python -m wyoming_amanuensis``
and ``python -m wyoming_faster_whisper``), as in benchmarks/bench_wyoming.py.
Prints a Markdown report; RESULTS.md is written by hand from it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import wave
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hypothesis import HealthCheck, Phase, given, seed, settings
from wyoming.event import Event, read_event

from benchmarks.bench_engine import materialise_model
from benchmarks.bench_wyoming import cpu_model, faster_whisper_argv, free_port, server, versions
from benchmarks.corpus import CORPUS_DIR, SHORT_COMMAND_S, clips, normalize
from benchmarks.fuzz_frames import DESCRIBE, connections, encode, exchange, replies, reply_problems

REQUEST_TIMEOUT = 300.0


@dataclass(frozen=True)
class Clip:
    name: str
    reference: str
    rate: int
    width: int
    channels: int
    pcm: bytes

    def frames(self, fraction: float = 1.0, chunk_samples: int = 1024) -> list[bytes]:
        """transcribe, audio-start, 1024-sample chunks (the first ``fraction`` of them), audio-stop."""
        fmt = {"rate": self.rate, "width": self.width, "channels": self.channels}
        step = chunk_samples * self.width * self.channels
        end = int(len(self.pcm) * fraction) if fraction < 1 else len(self.pcm)
        chunks = [encode(Event("audio-chunk", fmt, self.pcm[i:min(i + step, end)])) for i in range(0, end, step)]
        out = [encode(Event("transcribe", {"language": "en"})), encode(Event("audio-start", fmt)), *chunks]
        return out + [encode(Event("audio-stop"))] if fraction >= 1 else out


def load_clips(directory: Path) -> list[Clip]:
    out = []
    for c in clips(directory):
        if c.seconds > SHORT_COMMAND_S:
            continue
        with wave.open(str(c.path), "rb") as w:
            out.append(Clip(c.name, c.reference, w.getframerate(), w.getsampwidth(), w.getnchannels(),
                            w.readframes(w.getnframes())))
    return out


@dataclass
class Answer:
    kind: str  # "ok", an error code, "closed" or "timeout"
    text: str = ""
    seconds: float = 0.0


def request(port: int, clip: Clip, timeout: float = REQUEST_TIMEOUT) -> Answer:
    """One utterance on its own connection; the transcript or the error that ended it."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"".join(clip.frames()))
            stream = sock.makefile("rb")
            while True:
                event = read_event(stream)
                if event is None:
                    return Answer("closed", seconds=time.monotonic() - start)
                if event.type == "transcript":
                    return Answer("ok", event.data.get("text", ""), time.monotonic() - start)
                if event.type == "error":
                    return Answer(str(event.data.get("code")), event.data.get("text", ""), time.monotonic() - start)
    except socket.timeout:
        return Answer("timeout", seconds=time.monotonic() - start)
    except OSError as e:
        return Answer(f"oserror:{e.__class__.__name__}", seconds=time.monotonic() - start)


def describe_latency(port: int) -> Optional[float]:
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(DESCRIBE)
            event = read_event(sock.makefile("rb"))
    except OSError:
        return None
    return time.monotonic() - start if event is not None and event.type == "info" else None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def check(self, ok: bool, what: str) -> None:
        self.add(f"- {'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            self.failures.append(what)


# ---------------------------------------------------------------------------
# phases

def fuzz_batches(n_connections: int, batch_seed: int) -> list[bytes]:
    """``n_connections`` fuzzed connections, the same for the same seed."""
    out: list[bytes] = []

    @seed(batch_seed)
    @settings(max_examples=n_connections, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(connections)
    def collect(frames):
        out.append(frames)

    collect()
    return out


def phase_fuzz(port: int, pid: int, check: Clip, args: argparse.Namespace, rep: Report) -> None:
    rep.add("### Fuzz")
    frames = conns = problems_n = stuck = 0
    problems: list[str] = []
    kinds: Counter = Counter()
    describes: list[float] = []
    checks_ok = checks = 0
    fds_before = fd_count(pid)
    started = time.monotonic()
    batch = 0
    with ThreadPoolExecutor(args.fuzz_threads) as pool:
        while frames < args.fuzz_frames:
            batch_conns = fuzz_batches(args.fuzz_batch, 1000 + batch)
            batch += 1

            def one(conn: list[bytes]) -> tuple[int, list[str], list[str], bool]:
                try:
                    data = exchange(port, b"".join(conn))
                except socket.timeout:
                    return len(conn), [], [], True
                found = reply_problems(data)
                types = [] if found else [e.type if e.type != "error" else f"error:{e.data.get('code')}"
                                          for e in replies(data)]
                return len(conn), found, types, False

            for n, found, types, timed_out in pool.map(one, batch_conns):
                frames += n
                conns += 1
                problems_n += bool(found)
                problems += found[:1]
                kinds.update(types)
                stuck += timed_out
            latency = describe_latency(port)
            describes.append(latency if latency is not None else float("inf"))
            answer = request(port, check)
            checks += 1
            checks_ok += answer.kind == "ok" and normalize(answer.text) == normalize(check.reference)
            print(f"  batch {batch}: {frames} frames, {conns} connections, describe "
                  f"{ms(describes[-1])}, check {answer.kind} {answer.text!r}", flush=True)
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # connections the server is still closing
    rep.add(f"{frames} frames over {conns} connections ({args.fuzz_threads} at a time) in {elapsed:.0f} s; "
            f"replies: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common(12)) + ".")
    rep.add(f"Between the {batch} batches: describe median {ms(statistics.median(describes))}, "
            f"max {ms(max(describes))}; real transcription `{check.name}` right {checks_ok}/{checks}. "
            f"Server fds {fds_before} before, {fd_count(pid)} after.")
    rep.check(frames >= args.fuzz_frames, f"at least {args.fuzz_frames} frames sent ({frames})")
    rep.check(problems_n == 0, f"every reply whole and well-formed ({problems_n} connections not: {problems[:3]})")
    rep.check(stuck == 0, f"every finished connection let go ({stuck} held)")
    rep.check(max(describes) < 1.0, "describe answered within 1 s after every batch")
    rep.check(checks_ok == checks, "every check transcription right")


def solo_texts(port: int, chosen: list[Clip]) -> dict[str, str]:
    out = {}
    for clip in chosen:
        answer = request(port, clip)
        if answer.kind != "ok":
            raise SystemExit(f"solo request {clip.name} failed: {answer}")
        out[clip.name] = answer.text
    return out


def burst(port: int, chosen: list[Clip]) -> tuple[list[Answer], float]:
    """All clips at once, one connection each, released together."""
    gate = threading.Barrier(len(chosen))

    def one(clip: Clip) -> Answer:
        gate.wait()
        return request(port, clip)

    start = time.monotonic()
    with ThreadPoolExecutor(len(chosen)) as pool:
        answers = list(pool.map(one, chosen))
    return answers, time.monotonic() - start


def phase_crowd(port: int, chosen: list[Clip], solo: dict[str, str], rep: Report) -> None:
    rep.add(f"### {len(chosen)} clients at once")
    # Home Assistant gives describe 1 s: it must stay quick while the crowd waits.
    probes: list[float] = []
    slow: list[str] = []
    done = threading.Event()
    t0 = time.monotonic()

    def probe() -> None:
        while not done.is_set():
            sent = time.monotonic()
            latency = describe_latency(port)
            probes.append(latency if latency is not None else float("inf"))
            if probes[-1] > 0.25:
                slow.append(f"{ms(probes[-1])} sent at {sent - t0:.1f} s")
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        answers, elapsed = burst(port, chosen)
    finally:
        done.set()
        prober.join()
    kinds = Counter(a.kind for a in answers)
    same = crossed = differ = 0
    others = {text: name for name, text in solo.items()}
    for clip, answer in zip(chosen, answers):
        if answer.kind != "ok":
            continue
        if answer.text == solo[clip.name]:
            same += 1
        elif others.get(answer.text, clip.name) != clip.name:
            crossed += 1
            rep.add(f"  cross-talk: {clip.name} got {others[answer.text]}'s {answer.text!r}")
        else:
            differ += 1
            rep.add(f"  differs from solo: {clip.name}: {answer.text!r} vs {solo[clip.name]!r}")
    ok_times = [a.seconds for a in answers if a.kind == "ok"]
    rep.add(f"{len(chosen)} different clips released together: " + ", ".join(f"{k} {v}" for k, v in kinds.items())
            + f"; all done in {elapsed:.1f} s" + (f", ok answers took median {ms(statistics.median(ok_times))}, "
                                                     f"max {ms(max(ok_times))}" if ok_times else "") + ".")
    rep.add(f"Of the {kinds['ok']} answered: {same} exactly the clip's solo words, {differ} other words, "
            f"{crossed} another clip's words.")
    rep.add(f"describe every 0.1 s meanwhile: {len(probes)} answered, median {ms(statistics.median(probes))}, "
            f"max {ms(max(probes))}" + (f"; over 250 ms: {', '.join(slow)}" if slow else "") + ".")
    rep.check(crossed == 0, "no cross-talk")
    rep.check(max(probes) < 1.0, "describe answered within 1 s throughout")
    rep.check(set(kinds) <= {"ok", "busy"}, "every client got a transcript or busy")


def phase_vanish(port: int, pid: int, chosen: list[Clip], check: Clip, n: int, rep: Report) -> None:
    rep.add(f"### {n} vanishing clients")
    for _ in range(3):
        request(port, check)
    time.sleep(0.5)
    fds0, rss0 = fd_count(pid), rss_mib(pid)
    rng = random.Random(13)

    def vanish(i: int) -> None:
        clip = chosen[i % len(chosen)]
        frames = clip.frames(fraction=rng.uniform(0.1, 0.9))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            if i % 2:
                # SO_LINGER 0: the close is a reset, as from a satellite losing power or Wi-Fi.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"".join(frames))
            time.sleep(rng.uniform(0, 0.2))

    start = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(vanish, range(n)))
    elapsed = time.monotonic() - start
    time.sleep(2.0)  # the server notices the last ones go
    fds1, rss1 = fd_count(pid), rss_mib(pid)
    answer = request(port, check)
    right = answer.kind == "ok" and normalize(answer.text) == normalize(check.reference)
    rep.add(f"{n} clients (20 at a time, half closing, half resetting) each sent 10-90 % of a clip and vanished, "
            f"in {elapsed:.1f} s. Server fds {fds0} before, {fds1} after; RSS {rss0:.1f} MiB before, "
            f"{rss1:.1f} MiB after ({rss1 - rss0:+.1f}). Next request: {answer.kind} {answer.text!r}.")
    rep.check(fds1 <= fds0, "no file descriptor kept")
    rep.check(right, "the next request answered right")


def phase_soak(port: int, pid: int, chosen: list[Clip], solo: dict[str, str], args: argparse.Namespace,
               rep: Report) -> None:
    rep.add(f"### Soak: {args.soak} requests")
    samples: list[tuple[int, float]] = []
    kinds: Counter = Counter()
    mismatched = 0
    times = []
    start = time.monotonic()
    for i in range(1, args.soak + 1):
        clip = chosen[i % len(chosen)]
        answer = request(port, clip)
        kinds[answer.kind] += 1
        times.append(answer.seconds)
        mismatched += answer.kind == "ok" and answer.text != solo[clip.name]
        if i % 100 == 0:
            samples.append((i, rss_mib(pid)))
            print(f"  {i}: RSS {samples[-1][1]:.1f} MiB", flush=True)
    elapsed = time.monotonic() - start
    after = [(i, r) for i, r in samples if i > args.warmup]
    slope = 0.0
    if len(after) >= 2:
        xs, ys = [i / 100 for i, _ in after], [r for _, r in after]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    rep.add(f"{args.soak} requests one after another in {elapsed:.0f} s ({args.soak / elapsed:.2f} per s), "
            + ", ".join(f"{k} {v}" for k, v in kinds.items())
            + f"; {mismatched} answers differ from the clip's solo words; request median {ms(statistics.median(times))}, "
            f"p95 {ms(pct(times, 0.95))}.")
    rep.add("RSS (MiB) every 100 requests: " + ", ".join(f"{i}: {r:.1f}" for i, r in samples) + ".")
    rep.add(f"Growth after the first {args.warmup}: {slope:+.3f} MiB per 100 requests (least-squares slope), "
            f"{after[-1][1] - after[0][1]:+.1f} MiB from request {after[0][0]} to {after[-1][0]}."
            if len(after) >= 2 else "Not enough samples after warm-up for a slope.")
    rep.check(kinds["ok"] == args.soak, "every soak request answered")
    rep.check(mismatched == 0, "every soak answer the clip's solo words")
    rep.check(len(after) >= 2 and slope < 1.0, "RSS growth under 1 MiB per 100 requests")


def capacity(port: int, chosen: list[Clip]) -> tuple[float, float, float, Counter]:
    """(sequential commands/s, median request s, burst commands/s, burst outcome counts)."""
    request(port, chosen[0])
    times = []
    start = time.monotonic()
    for clip in chosen:
        answer = request(port, clip)
        if answer.kind != "ok":
            raise SystemExit(f"capacity request {clip.name} failed: {answer}")
        times.append(answer.seconds)
    sequential = len(chosen) / (time.monotonic() - start)
    answers, elapsed = burst(port, chosen)
    kinds = Counter(a.kind for a in answers)
    return sequential, statistics.median(times), kinds["ok"] / elapsed, kinds


def phase_capacity(ours: tuple, theirs: Optional[tuple], n: int, threads: int, rep: Report) -> None:
    rep.add(f"### Capacity ({threads} thread(s) per server)")
    rep.add("| server | sequential commands/s | median request | commands/s with " f"{n} at once | outcomes |")
    rep.add("|---|---|---|---|---|")
    for name, row in (("Amanuensis", ours), ("wyoming-faster-whisper", theirs)):
        if row is None:
            continue
        seq, med, sat, kinds = row
        rep.add(f"| {name} | {seq:.2f} | {ms(med)} | {sat:.2f} | " + ", ".join(f"{k} {v}" for k, v in kinds.items())
                + " |")
    rep.add()
    if theirs is not None:
        rep.add(f"Ratio Amanuensis / wyoming-faster-whisper: sequential {ours[0] / theirs[0]:.1f}x, "
                f"median request {ours[1] / theirs[1]:.2f}x (time), at once {ours[2] / theirs[2]:.1f}x.")


# ---------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    parser.add_argument("--model", default="base")
    parser.add_argument("--threads", type=int, default=1, help="torch / CTranslate2 threads of each server")
    parser.add_argument("--phases", default="fuzz,crowd,vanish,soak,capacity")
    parser.add_argument("--fuzz-frames", type=int, default=10_000)
    parser.add_argument("--fuzz-batch", type=int, default=100, help="connections per batch between checks")
    parser.add_argument("--fuzz-threads", type=int, default=4, help="fuzz connections open at once")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--vanishing", type=int, default=200)
    parser.add_argument("--soak", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200, help="soak requests before RSS growth is measured")
    parser.add_argument("--no-compare", action="store_true", help="capacity: skip wyoming-faster-whisper")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for the Amanuensis server (repeat; e.g. --server-arg=--queue-depth=64)")
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    all_clips = load_clips(args.corpus)
    if len(all_clips) < args.clients:
        raise SystemExit(f"{len(all_clips)} short clips in {args.corpus}, fewer than --clients {args.clients}")
    chosen = all_clips[:args.clients]
    check = next(c for c in all_clips if c.name == "living_room_light")

    rep = Report()
    load = os.getloadavg()
    command = "python -m benchmarks.bench_stress " + " ".join(argv if argv is not None else sys.argv[1:])
    rep.add(f"`{command.strip()}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} cores "
            f"(load average {load[0]:.1f}); {versions()}. Server: `--model {args.model} --threads {args.threads}` "
            + " ".join(args.server_arg) + f"; {len(all_clips)} short clips.")
    rep.add()
    ours = theirs = None
    with tempfile.TemporaryDirectory(prefix="bench-stress-") as tmp:
        tmp = Path(tmp)
        port = free_port()
        argv_ours = [sys.executable, "-m", "wyoming_amanuensis", "--uri", f"tcp://127.0.0.1:{port}",
                     "--model", args.model, "--threads", str(args.threads), *args.server_arg]
        with server(argv_ours, port, tmp / "amanuensis.log") as proc:
            pid = proc.pid
            rep.add(f"Server RSS after start-up: {rss_mib(pid):.1f} MiB, {fd_count(pid)} fds.")
            rep.add()
            solo = solo_texts(port, chosen)
            if "fuzz" in phases:
                phase_fuzz(port, pid, check, args, rep)
                rep.add()
            if "crowd" in phases:
                phase_crowd(port, chosen, solo, rep)
                rep.add()
            if "vanish" in phases:
                phase_vanish(port, pid, chosen, check, args.vanishing, rep)
                rep.add()
            if "soak" in phases:
                phase_soak(port, pid, chosen, solo, args, rep)
                rep.add()
            if "capacity" in phases:
                ours = capacity(port, chosen)
            alive = proc.poll() is None
            log = (tmp / "amanuensis.log").read_text(errors="replace")
        rep.check(alive, "the server process still running at the end")
        rep.check("Traceback" not in log, "no traceback in the server log")
        if "capacity" in phases and not args.no_compare and args.model == "base":
            model_dir = materialise_model("base", tmp / "whisper-base-ct2")
            p2 = free_port()
            with server(faster_whisper_argv(p2, 1, args.threads, model_dir, tmp / "data"), p2, tmp / "fw.log"):
                theirs = capacity(p2, chosen)
        if ours is not None:
            rep.add()
            phase_capacity(ours, theirs, len(chosen), args.threads, rep)
    rep.add()
    rep.add("FAILED: " + "; ".join(rep.failures) if rep.failures else "All checks passed.")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())

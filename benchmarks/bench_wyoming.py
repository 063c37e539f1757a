"""This server vs wyoming-faster-whisper, measured by ``wyoming-bench stt`` over the protocol.

    .venv/bin/python -m benchmarks.bench_wyoming                   # beams 1 and 5, 3 rounds, writes RESULTS.md
    .venv/bin/python -m benchmarks.bench_wyoming --beam 1 --rounds 1 --no-write
    .venv/bin/python -m benchmarks.bench_wyoming --streaming       # also Amanuensis' streaming mode

Both servers run on this machine, on the same bundled ``base`` weights (the
split model.bin joined into a temporary CTranslate2 directory for
faster-whisper), the same beam size, the same CPU thread count, language
``en`` sent by the client, and are measured in ONE ``wyoming-bench stt`` run
per beam size over the shared corpus: the same requests, in the same order,
1024-sample chunks at each file's own rate and channel count.
faster-whisper uses ``--compute-type int8`` (its fastest CPU setting; the
Amanuensis decoder is int8 by default too).

``--streaming`` adds a separate run of Amanuensis alone in wyoming-bench's
streaming mode (the client asks for partials with ``context.streaming``;
wyoming-faster-whisper has no streaming for Whisper), chunks paced at real
time for 16 kHz audio, to report the time to the first partial text.

The section "## Wyoming server vs wyoming-faster-whisper (wyoming-bench stt)"
of benchmarks/RESULTS.md is replaced with the tables (other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from benchmarks.bench_engine import materialise_model
from benchmarks.corpus import CORPUS_DIR

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Wyoming server vs wyoming-faster-whisper (wyoming-bench stt)"
MODEL = "base"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_describe(port: int, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    from wyoming.event import read_event, write_event
    from wyoming.info import Describe

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; log:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                f = sock.makefile("rwb")
                write_event(Describe().event(), f)
                f.flush()
                event = read_event(f)
                if event is not None and event.type == "info":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server on port {port} not ready after {timeout:.0f} s")


@contextmanager
def server(argv: list[str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_describe(port, proc, log)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def amanuensis_argv(port: int, beam: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "wyoming_amanuensis", "--uri", f"tcp://127.0.0.1:{port}", "--model", MODEL,
            "--beam-size", str(beam), "--threads", str(threads)]


def faster_whisper_argv(port: int, beam: int, threads: int, model_dir: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{port}",
            "--model", str(model_dir), "--data-dir", str(data_dir), "--download-dir", str(data_dir),
            "--local-files-only", "--stt-library", "faster-whisper", "--device", "cpu", "--compute-type", "int8",
            "--beam-size", str(beam), "--cpu-threads", str(threads), "--language", "en"]


def bench(args: argparse.Namespace, servers: list[str], mode: str, config: dict, extra: list[str], *,
          rounds: int, warmup: int) -> str:
    bench_bin = Path(sys.executable).with_name("wyoming-bench")
    argv = [str(bench_bin) if bench_bin.exists() else "wyoming-bench", "stt", "--corpus", str(args.corpus),
            "--mode", mode, "--config", json.dumps(config), "--rounds", str(rounds),
            "--warmup", str(warmup), "--timeout", "120", *extra, *servers]
    print("$", " ".join(argv), flush=True)
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"wyoming-bench failed with {result.returncode}")
    return result.stdout


def versions() -> str:
    names = ["wyoming-amanuensis", "wyoming-faster-whisper", "faster-whisper", "ctranslate2", "wyoming-bench",
             "wyoming", "torch"]
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) this benchmark's section; other sections stay as they are."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = text.rstrip() + "\n\n"
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current, count=1)
    else:
        updated = current.rstrip() + "\n\n" + block
    path.write_text(updated.rstrip() + "\n", encoding="utf-8")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    parser.add_argument("--beam", default="1,5", help="comma-separated beam sizes, one bench run each (default 1,5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both servers")
    parser.add_argument("--streaming", action="store_true", help="also run Amanuensis in streaming mode")
    parser.add_argument("--streaming-rounds", type=int, default=1, help="rounds of the paced streaming run")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    beams = [int(b) for b in args.beam.split(",") if b.strip()]
    n_clips = len(list(Path(args.corpus).glob("*.wav")))
    started = dt.datetime.now()
    load_before = os.getloadavg()

    outputs: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-wyoming-") as tmp:
        tmp = Path(tmp)
        model_dir = materialise_model(MODEL, tmp / f"whisper-{MODEL}-ct2")
        for beam in beams:
            p1, p2 = free_port(), free_port()
            with server(amanuensis_argv(p1, beam, args.threads), p1, tmp / f"amanuensis-{beam}.log"), \
                    server(faster_whisper_argv(p2, beam, args.threads, model_dir, tmp / "data"), p2,
                           tmp / f"faster-whisper-{beam}.log"):
                print(f"\n== beam {beam}: amanuensis on :{p1}, wyoming-faster-whisper on :{p2}", flush=True)
                out = bench(args, [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"], "non_streaming", {"language": "en"}, [],
                            rounds=args.rounds, warmup=args.warmup)
                outputs.append((f"beam {beam}: 127.0.0.1:{p1} = Amanuensis, 127.0.0.1:{p2} = wyoming-faster-whisper",
                                out))
        if args.streaming:
            p1 = free_port()
            with server(amanuensis_argv(p1, 1, args.threads), p1, tmp / "amanuensis-streaming.log"):
                out = bench(args, [f"127.0.0.1:{p1}"], "streaming",
                            {"language": "en", "context": {"streaming": True}}, ["--chunk-delay", "0.064"],
                            rounds=args.streaming_rounds, warmup=0)
                outputs.append((f"streaming, beam 1, chunks paced at 64 ms (real time at 16 kHz, slower for the "
                                f"44.1 kHz clips), {args.streaming_rounds} round(s), the streaming probe as warm-up: "
                                f"127.0.0.1:{p1} = Amanuensis", out))

    if args.no_write:
        return 0
    load_after = os.getloadavg()
    command = "python -m benchmarks.bench_wyoming " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"`{command.strip()}` on {started:%Y-%m-%d %H:%M}, {cpu_model()}, {os.cpu_count()} cores "
        f"(load average {load_before[0]:.1f} before, {load_after[0]:.1f} after); {versions()}.",
        "",
        f"Corpus: {n_clips} clips from `{args.corpus.name}/` (shared corpus). Model: bundled `{MODEL}` for both "
        f"(faster-whisper reads the same weights from a temporary CTranslate2 directory), compute type int8 for "
        f"faster-whisper, int8 decoder for Amanuensis, {args.threads} CPU threads each, language `en` in the "
        f"transcribe event, {args.rounds} timed rounds after {args.warmup} warm-up per clip, 1024-sample chunks "
        f"at each file's own format. Both servers measured in the same `wyoming-bench stt` run per beam size.",
        "",
    ]
    for title, out in outputs:
        lines += [f"### {title}", "", "```", out.strip(), "```", ""]
    write_section("\n".join(lines))
    print(f"\nwrote the section to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

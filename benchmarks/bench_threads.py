"""What more threads buy one command: each runtime at each thread count, in its own process.

    .venv/bin/python -m benchmarks.bench_threads [--configs onnx:1,onnx:2,torch:1,torch:2] [--clips 30]

Each configuration loads the engine (``--encoder-backend cpu --cpu-runtime R --threads N``),
transcribes the first ``--clips`` corpus clips (language en, untrimmed) three times as a
warm-up, then twice for the clock: median and mean wall ms per command, and the process's
CPU ms per command (all its threads: a runtime whose idle threads spin, or a library's,
shows it here as CPU time well above the wall time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(runtime: str, threads: int, n_clips: int) -> dict:
    from benchmarks.corpus import clips
    from wyoming_amanuensis.audio import to_16k
    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.pipeline import Engine
    from wyoming_amanuensis.request import Request

    engine = Engine.load(settings_from(encoder_backend="cpu", cpu_runtime=runtime, threads=threads))
    audio = [to_16k(*c.read())[0] for c in clips()[:n_clips]]
    for a in audio[:3]:
        engine.transcribe(a, 16000, Request(language="en"))
    wall = []
    cpu0 = time.process_time()
    for _ in range(2):
        for a in audio:
            t0 = time.perf_counter()
            engine.transcribe(a, 16000, Request(language="en"))
            wall.append((time.perf_counter() - t0) * 1000.0)
    cpu = (time.process_time() - cpu0) * 1000.0 / len(wall)
    return {"median": statistics.median(wall), "mean": statistics.mean(wall), "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="onnx:1,onnx:2,torch:1,torch:2", help="RUNTIME:THREADS,...")
    ap.add_argument("--clips", type=int, default=30)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        runtime, threads = args.child.split(":")
        print(json.dumps(child(runtime, int(threads), args.clips)))
        return
    print("| runtime | threads | median ms | mean ms | CPU ms per command |\n|---|---|---|---|---|")
    for config in args.configs.split(","):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_threads", "--child", config,
                              "--clips", str(args.clips)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        runtime, threads = config.split(":")
        print(f"| {runtime} | {threads} | {r['median']:.1f} | {r['mean']:.1f} | {r['cpu']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

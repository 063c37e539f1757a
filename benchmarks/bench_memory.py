"""Memory of the whole server process: Amanuensis vs wyoming-faster-whisper (faster-whisper
int8, the same base weights), each a fresh process, the same burst of requests.

    .venv/bin/python -m benchmarks.bench_memory --threads 1 --repeat 3

Each system is launched as the real server, waits until it answers ``describe``, then
serves a burst as Wyoming clients over TCP: ``--clips`` corpus commands sent by
``--concurrency`` clients at once (the first request also waits for the model to
load, as Home Assistant's first command after a restart would). Measured from
/proc/PID/status: the peak resident set over load and burst (VmHWM) and the resident
set ``--settle-s`` seconds after the burst (VmRSS: what the server holds between
commands). Amanuensis starts with its disk cache filled (graphs, prepared model, silence encoding) (one start
beforehand, as every start after the first); a third row runs it with
``--unload-after-s`` and reads its resident set once it has unloaded, a fourth on the torch
CPU runtime (``--cpu-runtime torch``, the engine before ONNX Runtime). Medians over
--repeat rounds, interleaved; ratios against wyoming-faster-whisper from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench_engine import materialise_model
from benchmarks.corpus import clips
from benchmarks.server_runs import launch, memory_mib, transcribe, wait_describe

FW = "wyoming-faster-whisper"
UNLOADED = "amanuensis --unload-after-s 2 (after unloading)"
TORCH = "amanuensis --cpu-runtime torch"


def one_run(system: str, args: argparse.Namespace, model_dir: Path, tmp: Path, tag: str, extra: tuple = ()) -> dict:
    log = tmp / f"{tag}.log"
    server = launch(system, args.threads, model_dir, tmp / "data", log, extra)
    wavs = [c.path for c in clips()[:args.clips]]
    try:
        wait_describe(server)
        transcribe(server.port, wavs[0])  # after the load
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda w: transcribe(server.port, w), wavs))
        if system == "amanuensis" and extra and "--unload-after-s" in extra:
            deadline = time.monotonic() + 60
            while "models unloaded after" not in log.read_text(errors="replace") and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(args.settle_s)
        mem = memory_mib(server.proc.pid)
    finally:
        server.stop()
    return {"peak": mem["VmHWM"], "steady": mem["VmRSS"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of both servers")
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--settle-s", type=float, default=2.0)
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {"amanuensis": [], FW: [], UNLOADED: [], TORCH: []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = materialise_model("base", tmp / "whisper-base-ct2")
        cache = ("--cache-dir", str(tmp / "cache"))
        torch = cache + ("--cpu-runtime", "torch")
        one_run("amanuensis", args, model_dir, tmp, "prime-cache", cache)
        one_run("amanuensis", args, model_dir, tmp, "prime-cache-torch", torch)
        for r in range(args.repeat):  # interleaved, a fresh process each time
            runs["amanuensis"].append(one_run("amanuensis", args, model_dir, tmp, f"a-{r}", cache))
            runs[FW].append(one_run(FW, args, model_dir, tmp, f"fw-{r}"))
            runs[UNLOADED].append(one_run("amanuensis", args, model_dir, tmp, f"u-{r}",
                                          cache + ("--unload-after-s", "2")))
            runs[TORCH].append(one_run("amanuensis", args, model_dir, tmp, f"t-{r}", torch))
            print(f"round {r + 1}: " + ", ".join(f"{k}: peak {v[-1]['peak']:.0f}, steady {v[-1]['steady']:.0f} MiB"
                                                for k, v in runs.items()), flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("peak", "steady")} for k, v in runs.items()}
    fw = med[FW]
    print(f"\nbase, {args.threads} thread(s), {args.clips} clips from {args.concurrency} concurrent clients, "
          f"{args.repeat} fresh processes per system (medians, MiB)\n")
    print(f"| system | peak RSS | RSS {args.settle_s:g} s after the burst | peak vs {FW} | steady vs {FW} |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['peak']:.0f} | {m['steady']:.0f} | {m['peak'] / fw['peak']:.2f} | "
              f"{m['steady'] / fw['steady']:.2f} |")


if __name__ == "__main__":
    main()

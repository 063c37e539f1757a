"""Start-up: launch -> describe answered and launch -> first transcript, Amanuensis vs
wyoming-faster-whisper (same base weights, int8, greedy, language en, same threads), each a
fresh server process; and what reloading after an idle unload costs Amanuensis.

    .venv/bin/python -m benchmarks.bench_startup --threads 1 --rounds 3

For each round and system: launch the real server process, poll ``describe`` every 20 ms
until it answers, then send one corpus command as a Wyoming client and time its
transcript. Amanuensis runs twice per round: with an empty ``--cache-dir`` (the first
start after installing: the ONNX graphs written and the silence encoded and saved) and
with the cache that start left (every later start); a third row is a later start on the torch
CPU runtime (``--cpu-runtime torch``, the engine before ONNX Runtime). The reload row: a server with
``--unload-after-s 1`` transcribes, waits until it has unloaded, and times the next
request against one on the loaded server. Medians; ratios against
wyoming-faster-whisper measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_engine import materialise_model
from benchmarks.corpus import CORPUS_DIR, normalize
from benchmarks.server_runs import launch, transcribe, wait_describe

CLIP = "living_room_light"


def start_once(system: str, threads: int, model_dir: Path, data_dir: Path, log: Path, extra: tuple = ()) -> dict:
    server = launch(system, threads, model_dir, data_dir, log, extra)
    try:
        describe_s = wait_describe(server)
        text = transcribe(server.port, CORPUS_DIR / f"{CLIP}.wav")
        first_s = time.monotonic() - server.t0
    finally:
        server.stop()
    if normalize(text) != normalize((CORPUS_DIR / f"{CLIP}.txt").read_text()):
        raise RuntimeError(f"{system}: wrong words {text!r}")
    return {"describe_s": describe_s, "first_s": first_s}


def reload_cost(threads: int, model_dir: Path, data_dir: Path, log: Path, cache: Path) -> dict:
    server = launch("amanuensis", threads, model_dir, data_dir, log,
                    ("--unload-after-s", "1", "--cache-dir", str(cache)))
    wav = CORPUS_DIR / f"{CLIP}.wav"
    try:
        wait_describe(server)
        transcribe(server.port, wav)
        t0 = time.monotonic()
        transcribe(server.port, wav)  # loaded: the request's own time
        loaded_s = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while "models unloaded after" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        transcribe(server.port, wav)  # waits for the reload
        reload_s = time.monotonic() - t0
    finally:
        server.stop()
    return {"loaded_s": loaded_s, "reload_s": reload_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of both servers")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    rows: dict[str, list[dict]] = {"wyoming-faster-whisper": [], "amanuensis, first start (empty cache)": [],
                                   "amanuensis, later starts (disk cache)": [],
                                   "amanuensis --cpu-runtime torch, later starts (disk cache)": []}
    reloads = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = materialise_model("base", tmp / "whisper-base-ct2")
        for r in range(args.rounds):  # interleaved: a slow moment of the machine hits every system
            cache = tmp / f"cache-{r}"
            rows["wyoming-faster-whisper"].append(
                start_once("wyoming-faster-whisper", args.threads, model_dir, tmp / "data", tmp / f"fw-{r}.log"))
            rows["amanuensis, first start (empty cache)"].append(
                start_once("amanuensis", args.threads, model_dir, tmp / "data", tmp / f"a-cold-{r}.log",
                           ("--cache-dir", str(cache))))
            rows["amanuensis, later starts (disk cache)"].append(
                start_once("amanuensis", args.threads, model_dir, tmp / "data", tmp / f"a-warm-{r}.log",
                           ("--cache-dir", str(cache))))
            torch = ("--cache-dir", str(tmp / "cache-torch"), "--cpu-runtime", "torch")
            if r == 0:  # its prepared model and silence encoding, as a later start finds them
                start_once("amanuensis", args.threads, model_dir, tmp / "data", tmp / "t-prime.log", torch)
            rows["amanuensis --cpu-runtime torch, later starts (disk cache)"].append(
                start_once("amanuensis", args.threads, model_dir, tmp / "data", tmp / f"t-warm-{r}.log", torch))
            reloads.append(reload_cost(args.threads, model_dir, tmp / "data", tmp / f"a-reload-{r}.log", cache))
            print(f"round {r + 1}: " + ", ".join(f"{k}: {v[-1]['first_s']:.2f} s" for k, v in rows.items()), flush=True)

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("describe_s", "first_s")} for k, v in rows.items()}
    fw = med["wyoming-faster-whisper"]
    print(f"\nbase, {args.threads} thread(s), {args.rounds} fresh processes per system (medians)\n")
    print("| system | launch -> describe s | launch -> first transcript s | first transcript vs wyoming-faster-whisper |")
    print("|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['describe_s']:.2f} | {m['first_s']:.2f} | {m['first_s'] / fw['first_s']:.2f} |")
    loaded = statistics.median(x["loaded_s"] for x in reloads)
    reload = statistics.median(x["reload_s"] for x in reloads)
    print(f"\nAmanuensis --unload-after-s 1: a request on the loaded server {loaded:.2f} s, "
          f"the first after the idle unload {reload:.2f} s (reload cost {reload - loaded:.2f} s)")


if __name__ == "__main__":
    main()

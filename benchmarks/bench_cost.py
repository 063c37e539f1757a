"""CPU seconds (and joules, where the host's counters are readable) per command:
Amanuensis vs faster-whisper, each in its own process, same clips, one run.

    .venv/bin/python -m benchmarks.bench_cost [--threads 1] [--limit N] [--settle-s 0.5]

Per clip, in each child process: the process CPU time (``time.process_time``,
every thread) over the call, and over the call plus ``--settle-s`` of idle
afterwards (OpenMP pools, torch's and CTranslate2's, spin for a while after
a call returns: CPU the command costs although the caller is done). For
Amanuensis it also prints what the engine charged the request
(``timings.cpu_s``, cost.py) and the calling thread's own ``thread_time``,
which misses the intra-op pool's work: why the engine measures process time.
Joules come from the same meter the server uses (cost.EnergyMeter), package
energy of the whole host. Medians are over the short commands (<= 6 s), as
in bench_engine; ratios are against each faster-whisper compute type.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.bench_engine import amanuensis_system, faster_whisper_system, materialise_model
from benchmarks.corpus import SHORT_COMMAND_S, clips
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.cost import EnergyMeter

ROOT = Path(__file__).resolve().parents[1]


def child_main(args) -> None:
    kind = args.child
    corpus = clips()[: args.limit] if args.limit else clips()
    audio = [to_16k(*c.read())[0] for c in corpus]
    meter = EnergyMeter.detect()
    if kind == "amanuensis":
        system = amanuensis_system("amanuensis", settings_from(model=args.model, encoder_backend="cpu",
                                                               threads=args.threads), "en")
    else:
        tmp = tempfile.TemporaryDirectory()
        model_dir = materialise_model(args.model, Path(tmp.name) / args.model)
        system = faster_whisper_system(model_dir, kind, args.fw_beam, "en", args.threads)
    system.run(audio[0])  # warm-up
    time.sleep(args.settle_s)
    rows = []
    for a in audio:
        e0, c0, th0, t0 = meter.read(), time.process_time(), time.thread_time(), time.perf_counter()
        text, stages = system.run(a)
        wall, cpu, thread = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - th0
        e1 = meter.read()
        time.sleep(args.settle_s)
        rows.append({"seconds": len(a) / 16000, "wall_s": wall, "cpu_s": cpu, "thread_s": thread,
                     "settled_cpu_s": time.process_time() - c0, "engine_cpu_s": stages.get("cpu_s"),
                     "energy_j": meter.joules(e0, e1), "settled_energy_j": meter.joules(e0, meter.read()),
                     "text": text})
    print(json.dumps({"rows": rows, "energy": meter.status.as_dict()}))


def run_child(kind: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_cost", "--child", kind, "--model", args.model,
           "--limit", str(args.limit), "--threads", str(args.threads), "--fw-beam", str(args.fw_beam),
           "--settle-s", str(args.settle_s)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(rows: list[dict], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(v: Optional[float], unit: str, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f} {unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="first N clips only")
    ap.add_argument("--fw-compute", default="int8,default")
    ap.add_argument("--fw-beam", type=int, default=5)
    ap.add_argument("--settle-s", type=float, default=0.5, help="idle after each call, counted as settled CPU")
    ap.add_argument("--json", type=Path, help="write the raw rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)

    kinds = ["amanuensis"] + [c for c in args.fw_compute.split(",") if c]
    results = {k: run_child(k, args) for k in kinds}
    energy = results["amanuensis"]["energy"]
    n = len(results["amanuensis"]["rows"])
    short = [i for i, r in enumerate(results["amanuensis"]["rows"]) if r["seconds"] <= SHORT_COMMAND_S]
    print(f"\n{n} clips ({len(short)} short commands <= {SHORT_COMMAND_S:g} s), model {args.model}, "
          f"{args.threads} thread(s), faster-whisper beam {args.fw_beam}, settle {args.settle_s:g} s; "
          f"energy: {'from ' + energy['source'] if energy['available'] else 'unavailable (' + energy['reason'] + ')'}\n")
    names = {k: "amanuensis" if k == "amanuensis" else f"faster-whisper {k}" for k in kinds}
    medians = {k: {key: med([results[k]["rows"][i] for i in short], key)
                   for key in ("wall_s", "cpu_s", "settled_cpu_s", "thread_s", "engine_cpu_s", "energy_j",
                               "settled_energy_j")} for k in kinds}
    fw = [k for k in kinds if k != "amanuensis"]
    header = ("| system | wall | CPU (call) | CPU (call + settle) | joules (call) |"
              + "".join(f" CPU ratio vs {names[f]} |" for f in fw))
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for k in kinds:
        m = medians[k]
        row = (f"| {names[k]} | {fmt(m['wall_s'], 's')} | {fmt(m['cpu_s'], 's')} | {fmt(m['settled_cpu_s'], 's')} "
               f"| {fmt(m['energy_j'], 'J', 2)} |")
        for f in fw:
            row += f" {m['cpu_s'] / medians[f]['cpu_s']:.3f} ({m['settled_cpu_s'] / medians[f]['settled_cpu_s']:.3f}) |"
        print(row)
    a = medians["amanuensis"]
    print(f"\namanuensis, medians over short commands: engine-charged timings.cpu_s {fmt(a['engine_cpu_s'], 's')}, "
          f"process CPU over the call {fmt(a['cpu_s'], 's')}, calling thread's thread_time {fmt(a['thread_s'], 's')}")
    per_clip = [r["engine_cpu_s"] / r["cpu_s"] for r in results["amanuensis"]["rows"] if r["cpu_s"] > 0]
    print(f"engine-charged / process CPU per clip: median {statistics.median(per_clip):.3f}, "
          f"min {min(per_clip):.3f}, max {max(per_clip):.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

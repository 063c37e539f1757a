"""Peak memory: Amanuensis vs faster-whisper, each in its own fresh process, same clips.

    .venv/bin/python -m benchmarks.bench_memory [--model base] [--clips 10]

Each system runs in a child process that loads the model, transcribes the
first N corpus clips and reports its peak resident set size (ru_maxrss);
the table gives the medians over --repeat runs and the ratio to each
faster-whisper compute type.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
kind, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
from benchmarks.corpus import clips
from wyoming_amanuensis.audio import to_16k
audio = [to_16k(*c.read())[0] for c in clips()[:n]]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if kind == "amanuensis":
    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.pipeline import Engine
    engine = Engine.load(settings_from(model=model, encoder_backend="cpu", threads=2))
    run = lambda a: engine.transcribe(a, 16000).text
else:
    from faster_whisper import WhisperModel
    fw = WhisperModel(sys.argv[4], device="cpu", compute_type=kind.split(":")[1], cpu_threads=2)
    run = lambda a: " ".join(s.text for s in fw.transcribe(a, beam_size=5, language="en")[0])
load_s = time.perf_counter() - t0
for a in audio:
    run(a)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_load_mb": base / 1024, "load_s": load_s}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fw-compute", default="int8,default")
    args = ap.parse_args()

    from benchmarks.bench_engine import materialise_model

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = materialise_model(args.model, Path(tmp) / args.model)
        kinds = ["amanuensis"] + [f"faster-whisper:{c}" for c in args.fw_compute.split(",") if c]
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeat):
            for kind in kinds:  # interleaved, fresh process each time
                out = subprocess.run([sys.executable, "-c", CHILD, kind, args.model, str(args.clips), str(model_dir)],
                                     cwd=root, capture_output=True, text=True, check=True)
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    load = {k: statistics.median(r["load_s"] for r in v) for k, v in runs.items()}
    fw = [k for k in kinds if k.startswith("faster-whisper")]
    print(f"\nmodel {args.model}, {args.clips} clips, {args.repeat} fresh processes per system (medians)\n")
    print("| system | peak RSS MB | model load s |" + "".join(f" RSS vs {k} |" for k in fw))
    print("|---|---|---|" + "---|" * len(fw))
    for k in kinds:
        print(f"| {k} | {med[k]:.0f} | {load[k]:.1f} |" + "".join(f" {med[k] / med[f]:.2f} |" for f in fw))


if __name__ == "__main__":
    main()

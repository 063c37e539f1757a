"""Entry point of the ONNX Runtime prototype measurement (not product code; see __init__ and README.md).

    .venv/bin/python -m benchmarks.onnx_prototype [--workdir DIR] [--rounds 3] [--steps build,compare,timing,floor]
    .venv/bin/python -m benchmarks.onnx_prototype --steps transcripts,batch,kvcache,shapes [--workdir DIR]

The default steps take about 2 minutes on a 2-core machine. The others are asked for by name: transcripts
(every corpus and corpus_ml clip through both engines and the difference diagnosis, 3-6 minutes), batch
(batched decoding of rows with different audio lengths, bitwise against solo, about 1 minute), kvcache (an
in-place KV cache against the Concat step and torch, about 15 s) and shapes (the graphs built for every
CTranslate2 Whisper shape on random weights, against our torch modules).

Every step first builds the graphs into WORKDIR/graphs unless a complete build is there; WORKDIR is kept
between runs, so a second run reuses them (delete WORKDIR/graphs to rebuild). Each step writes its
figures to WORKDIR/results/STEP.json and prints them as a markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

STEPS = ("build", "compare", "timing", "floor", "transcripts", "batch", "kvcache", "shapes")
DEFAULT_STEPS = STEPS[:4]
PRODUCT = "ext-nopat+flash+pread"  # the floor's ORT set-up unless --ort-variant says otherwise


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.onnx_prototype", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "amanuensis-onnx-prototype",
                    help="graphs, prepared files, caches and results; kept between runs (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="floor: fresh processes per system (medians)")
    ap.add_argument("--steps", default=",".join(DEFAULT_STEPS),
                    help="comma-separated, of: " + ", ".join(STEPS) + " (default: %(default)s)")
    ap.add_argument("--ort-variant", default=PRODUCT,
                    help="floor: the ORT set-up (words in benchmarks/onnx_prototype/floor.py)")
    ap.add_argument("--full-window", action="store_true", help="floor: ORT also encodes one full 30 s window after")
    args = ap.parse_args()
    steps = args.steps.split(",")
    if unknown := set(steps) - set(STEPS):
        ap.error(f"unknown steps {sorted(unknown)}")

    from . import batching, floor, graphs, kvcache, numerics, shapes, timing, transcripts
    work = args.workdir.resolve()
    (work / "results").mkdir(parents=True, exist_ok=True)
    built = graphs.build(work)
    jobs = {"compare": lambda: numerics.run(work, built), "timing": lambda: timing.run(work, built),
            "floor": lambda: floor.run(work, built, args.rounds, args.ort_variant, args.full_window),
            "transcripts": lambda: transcripts.run(work, built), "batch": lambda: batching.run(work, built),
            "kvcache": lambda: kvcache.run(work, built), "shapes": lambda: shapes.run(work)}
    tables = {"compare": numerics.table, "timing": timing.table, "floor": floor.table, "transcripts": transcripts.table,
              "batch": batching.table, "kvcache": kvcache.table, "shapes": shapes.table}
    for step in (s for s in STEPS if s in steps and s in jobs):
        print(f"\n## {step}", flush=True)
        t0 = time.perf_counter()
        result = jobs[step]()
        name = step  # another floor set-up gets its own file, beside the product set-up's
        if step == "floor" and (args.ort_variant != PRODUCT or args.full_window):
            name += f"_{args.ort_variant}" + ("_fullwindow" if args.full_window else "")
        (work / "results" / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(f"\n{tables[step](result)}\n\n({time.perf_counter() - t0:.0f} s; {work / 'results' / name}.json)",
              flush=True)


if __name__ == "__main__":
    main()

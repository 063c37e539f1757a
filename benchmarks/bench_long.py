"""Long audio (issue 12 item 4): 60 s and 120 s utterances against faster-whisper, same weights, one run.

    .venv/bin/python -m benchmarks.bench_long --threads 1
    .venv/bin/python -m benchmarks.bench_long --threads 1 --variant nocond:condition_on_previous_text=false
    .venv/bin/python -m benchmarks.bench_long --threads 1 --wide   # 10 more: 90 s from 10 offsets

Each utterance is the corpus's jfk followed by distinct short commands with
0.6 s gaps (benchmarks/long_audio.py). Each system runs in its own child
process (as in bench_engine) and transcribes every utterance whole, then
every clip in them alone: the WER over the long utterances is printed next
to the per-clip WER over the same clips, with the sentences lost or heard
twice, and the latency per length as a median and a ratio to
faster-whisper (beam 5, condition_on_previous_text on, its defaults; it
windows long audio the same way), and each process's peak RSS after load and
a 5 s clip and after each long utterance.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_engine import amanuensis_system, faster_whisper_system, materialise_model, median, parse_variant
from benchmarks.corpus import wer
from benchmarks.long_audio import check_sentences, long_utterance
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import settings_from

# (seconds, offset into the short commands): distinct sentences per utterance of one length
UTTERANCES = [(60, 0), (60, 16), (120, 0), (120, 32)]
# --wide: 90 s utterances from ten offsets, so that the windows' edges fall in ten more places
WIDE = [(90, k) for k in range(4, 80, 8)]


def child_main(args) -> None:
    kind, name, overrides = json.loads(args.child)
    utterances = [long_utterance(s, o) for s, o in _utterances(args)]
    if kind == "amanuensis":
        system = amanuensis_system(name, settings_from(model=args.model, encoder_backend="cpu", threads=args.threads,
                                                       max_utterance_s=600, **overrides), args.language)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            system = faster_whisper_system(materialise_model(args.model, Path(tmp) / args.model), name,
                                           args.fw_beam, args.language, args.threads)
    system.run(utterances[0].audio[:16000 * 5])  # warm-up
    out = {"long": [], "clips": {}, "rss_short_mb": _peak_rss_mb()}
    for u in utterances:
        t0 = time.perf_counter()
        text, _ = system.run(u.audio)
        out["long"].append({"seconds": u.seconds, "ms": (time.perf_counter() - t0) * 1000.0, "text": text,
                            "references": [c.reference for c in u.clips]})
        out.setdefault("rss_long_mb", {})[f"{u.seconds:.0f}"] = _peak_rss_mb()
        for c in u.clips:
            if c.name not in out["clips"]:
                out["clips"][c.name] = [c.reference, system.run(to_16k(*c.read())[0])[0]]
    print(json.dumps(out))


def _utterances(args) -> list[tuple[int, int]]:
    return UTTERANCES + (WIDE if args.wide else [])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(spec: tuple, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_long", "--child", json.dumps(spec), "--model", args.model,
           "--language", args.language, "--threads", str(args.threads), "--fw-beam", str(args.fw_beam)]
    cmd += ["--wide"] if args.wide else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bucket(seconds: float, lengths: list[int]) -> int:
    return min(lengths, key=lambda s: abs(s - seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--language", default="en")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fw-beam", type=int, default=5)
    ap.add_argument("--fw-compute", default="int8")
    ap.add_argument("--variant", action="append", default=[], help="NAME:option=value,... an extra Amanuensis config")
    ap.add_argument("--wide", action="store_true", help="also the 90 s utterances from ten offsets (WIDE)")
    ap.add_argument("--json", type=Path, help="write raw results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    specs = [("amanuensis", "amanuensis", {})] + [("amanuensis", *parse_variant(v)) for v in args.variant]
    specs += [("faster-whisper", ct, {}) for ct in filter(None, args.fw_compute.split(","))]
    results = {}
    for spec in specs:
        label = spec[1] if spec[0] == "amanuensis" else f"faster-whisper {spec[1]} beam{args.fw_beam}"
        print(f"running {label} ...", file=sys.stderr, flush=True)
        results[label] = run_child(spec, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    fw = next((k for k in results if k.startswith("faster-whisper")), None)
    lengths = sorted({s for s, _ in _utterances(args)})
    print(f"{'system':<28} {'WER long':>8} {'WER clips':>9} {'missing':>7} {'doubled':>7} {'inserted':>8} "
          + " ".join(f"{f'{s} s ms':>9} {'x fw':>5}" for s in lengths))
    for label, r in results.items():
        longs = r["long"]
        w_long = wer([" ".join(x["references"]) for x in longs], [x["text"] for x in longs])
        clip_refs, clip_hyps = zip(*r["clips"].values())
        w_clips = wer(list(clip_refs), list(clip_hyps))
        checks = [check_sentences(x["references"], x["text"]) for x in longs]
        row = (f"{label:<28} {w_long:>8.1%} {w_clips:>9.1%} {sum(len(c.missing) for c in checks):>7} "
               f"{sum(len(c.repeated) for c in checks):>7} {sum(c.inserted_words for c in checks):>8}")
        for s in lengths:
            ms = median([x["ms"] for x in longs if _bucket(x["seconds"], lengths) == s])
            base = median([x["ms"] for x in results[fw]["long"] if _bucket(x["seconds"], lengths) == s]) if fw else None
            row += f" {ms:>9.0f} {ms / base if base else float('nan'):>5.2f}"
        print(row)
        rss = r["rss_long_mb"]
        print(f"  peak RSS: {r['rss_short_mb']:.0f} MB after load + a 5 s clip; after each long utterance "
              + ", ".join(f"{k} s: {v:.0f} MB" for k, v in rss.items()))
        for c, x in zip(checks, longs):
            if c.missing or c.repeated:
                print(f"  {x['seconds']:.0f} s: missing {c.missing} doubled {c.repeated}")


if __name__ == "__main__":
    main()

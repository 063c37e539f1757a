"""Engine vs faster-whisper, same weights, same machine, one run.

    .venv/bin/python -m benchmarks.bench_engine                # defaults vs faster-whisper int8 + default
    .venv/bin/python -m benchmarks.bench_engine --variant full:fast_decoder=false --variant m1:splice_margin_s=1

Each system runs in its own child process (CTranslate2's OpenMP threads keep
spinning after a call and would steal the cores from torch in a shared
process), one warm-up clip, then the whole corpus; ``--rounds`` repeats
this with the systems' order rotated, and each clip's latency is the median
over rounds. Prints per-system WER and latency medians,
per-stage medians for Amanuensis variants, and each latency as a ratio to
faster-whisper. faster-whisper gets the bundled base weights written to a
temporary directory (model.bin parts joined), beam 5 as wyoming-faster-whisper
uses on x86, the full 30 s window as it always does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from benchmarks.corpus import SHORT_COMMAND_S, Clip, clips, wer
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import Settings, _coerce, _fields_by_name, settings_from
from wyoming_amanuensis.model.loader import resolve
from wyoming_amanuensis.pipeline import Engine
from wyoming_amanuensis.request import Request


@dataclass
class System:
    name: str
    run: Optional[Callable[[np.ndarray], tuple[str, dict]]]  # 16 kHz audio -> (text, stage timings)
    texts: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)


def materialise_model(name: str, target: Path) -> Path:
    """The bundled model as a plain CTranslate2 directory (for faster-whisper)."""
    _, directory, blob = resolve(name)
    target.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (directory / f).is_file():
            (target / f).write_bytes((directory / f).read_bytes())
    (target / "model.bin").write_bytes(blob if blob is not None else (directory / "model.bin").read_bytes())
    return target


def amanuensis_system(name: str, settings: Settings, language: Optional[str]) -> System:
    engine = Engine.load(settings)

    def run(audio: np.ndarray) -> tuple[str, dict]:
        r = engine.transcribe(audio, 16000, Request(language=language))
        return r.text, r.timings.as_dict()

    return System(name, run)


def faster_whisper_system(model_dir: Path, compute_type: str, beam: int, language: Optional[str], threads: int) -> System:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads)

    def run(audio: np.ndarray) -> tuple[str, dict]:
        segments, _ = model.transcribe(audio, beam_size=beam, language=language)
        return " ".join(s.text for s in segments).strip(), {}

    return System(f"faster-whisper {compute_type} beam{beam}", run)


def run_child(spec: tuple, args) -> dict:
    """One system over the corpus in a fresh process; returns its texts, latencies, stages."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "benchmarks.bench_engine", "--child", json.dumps(spec), "--model", args.model,
           "--language", args.language, "--limit", str(args.limit), "--threads", str(args.threads),
           "--fw-beam", str(args.fw_beam)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(args) -> None:
    kind, name, overrides = json.loads(args.child)
    language = args.language or None
    corpus = clips()[: args.limit] if args.limit else clips()
    audio = [to_16k(*c.read())[0] for c in corpus]
    if kind == "amanuensis":
        system = amanuensis_system(name, settings_from(model=args.model, encoder_backend="cpu",
                                                       threads=args.threads, **overrides), language)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = materialise_model(args.model, Path(tmp) / args.model)
            system = faster_whisper_system(model_dir, name, args.fw_beam, language, args.threads)
    system.run(audio[0])  # warm-up: first-call allocations are not what a user waits for twice
    for a in audio:
        t0 = time.perf_counter()
        text, stages = system.run(a)
        system.latency_ms.append((time.perf_counter() - t0) * 1000.0)
        system.texts.append(text)
        system.stages.append(stages)
    print(json.dumps({"texts": system.texts, "latency_ms": system.latency_ms, "stages": system.stages}))


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    known = _fields_by_name()
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = _coerce(known[key], value)
    return name, overrides


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--language", default="en", help="language sent with each request ('' = auto-detect)")
    ap.add_argument("--variant", action="append", default=[], help="NAME:option=value,... an extra Amanuensis config")
    ap.add_argument("--no-default", action="store_true", help="skip the default Amanuensis config")
    ap.add_argument("--fw-compute", default="int8,default", help="faster-whisper compute types ('' = skip)")
    ap.add_argument("--fw-beam", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0, help="first N clips only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write raw results here")
    ap.add_argument("--rounds", type=int, default=1, help="child runs per system (order rotated)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)
    language = args.language or None

    corpus: list[Clip] = clips()
    if args.limit:
        corpus = corpus[: args.limit]
    audio = [to_16k(*c.read())[0] for c in corpus]

    specs = [("amanuensis", name, overrides) for name, overrides in
             ([] if args.no_default else [("amanuensis", {})]) + [parse_variant(v) for v in args.variant]]
    specs += [("faster-whisper", ct, {}) for ct in args.fw_compute.split(",") if ct]
    runs: dict[int, list[dict]] = {i: [] for i in range(len(specs))}
    for r in range(args.rounds):
        order = list(range(len(specs)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            runs[i].append(run_child(specs[i], args))
    systems: list[System] = []
    for i, (kind, name, _) in enumerate(specs):
        label = name if kind == "amanuensis" else f"faster-whisper {name} beam{args.fw_beam}"
        s = System(label, run=None)
        s.texts = runs[i][0]["texts"]
        s.latency_ms = [statistics.median(rr["latency_ms"][k] for rr in runs[i]) for k in range(len(corpus))]
        s.stages = runs[i][0]["stages"]
        systems.append(s)

    refs = [c.reference for c in corpus]
    short = [i for i, c in enumerate(corpus) if len(audio[i]) / 16000 <= SHORT_COMMAND_S]
    fw = [s for s in systems if s.name.startswith("faster-whisper")]
    print(f"\ncorpus: {len(corpus)} clips ({len(short)} short commands <= {SHORT_COMMAND_S:g} s), model {args.model}, "
          f"language {language or 'auto'}, {args.threads} threads\n")
    header = "| system | WER all | WER short | median ms (short) | mean ms (short) |" + "".join(
        f" vs {f.name} |" for f in fw)
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    report = {}
    for s in systems:
        lat_short = [s.latency_ms[i] for i in short]
        row = (f"| {s.name} | {100 * wer(refs, s.texts):.1f} % | {100 * wer([refs[i] for i in short], [s.texts[i] for i in short]):.1f} % "
               f"| {median(lat_short):.0f} | {statistics.mean(lat_short):.0f} |")
        for f in fw:
            row += f" {statistics.mean(lat_short) / statistics.mean([f.latency_ms[i] for i in short]):.3f} |"
        print(row)
        report[s.name] = {"texts": s.texts, "latency_ms": s.latency_ms, "stages": s.stages}
    for s in systems:
        if s.stages and s.stages[0]:
            keys = ["audio_ms", "mel_ms", "encoder_ms", "decoder_ms", "alignment_ms", "total_ms"]
            meds = {k: median([s.stages[i][k] for i in short]) for k in keys}
            print(f"\n{s.name} per-stage medians (short commands): " + ", ".join(f"{k[:-3]} {v:.1f} ms" for k, v in meds.items()))
    for s in systems[1:]:
        diff = [c.name for i, c in enumerate(corpus) if s.texts[i] != systems[0].texts[i]]
        print(f"\n{s.name}: {len(corpus) - len(diff)}/{len(corpus)} transcripts identical to {systems[0].name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clips": [c.name for c in corpus], "references": refs, "systems": report}, indent=1))


if __name__ == "__main__":
    main()

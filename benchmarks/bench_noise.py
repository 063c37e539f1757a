"""How much of a WER difference between two exact implementations is float noise.

    .venv/bin/python -m benchmarks.bench_noise [--runtimes onnx,torch] [--corpus en|ml] [--seeds 5]

Two runtimes that compute the same network (ONNX Runtime and torch, encoder outputs within
float32 rounding of each other) give different transcripts on a few knife-edge clips, and on
a corpus of 73 commands a clip is 1-2 WER points. This runs each runtime (each in its own
process) over the corpus as bench_accuracy's ``amanuensis`` system does (VAD-trimmed window,
language given, the runtime's defaults, its text normalisation), once as computed (seed 0) and then with its encoder
output multiplied by (1 + 1e-6 * N(0, 1)) per value (``--eps``; float32 rounding is ~6e-8):
the spread of WER over the seeds is what a difference of that size between two runtimes
can be made of. Prints WER per seed, and the median and range per runtime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(runtime: str, corpus: str, seeds: int, eps: float) -> list[float]:
    import jiwer
    import numpy as np

    from benchmarks.bench_accuracy import norm
    from benchmarks.corpus import CORPUS_DIR, clips
    from wyoming_amanuensis.audio import to_16k
    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.decoding import DecodeOptions, max_tokens_for
    from wyoming_amanuensis.encoders.base import EncoderOutput
    from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel
    from wyoming_amanuensis.pipeline import Engine
    from wyoming_amanuensis.request import Request
    from wyoming_amanuensis.vad import SileroVad, SpeechTracker

    engine = Engine.load(settings_from(encoder_backend="cpu", cpu_runtime=runtime, threads=1))
    loaded = engine.models[engine.default_model]
    tok, vad = loaded.model.tokenizer, SileroVad()
    items = []
    for c in clips(CORPUS_DIR if corpus == "en" else CORPUS_DIR.parent / "corpus_ml"):
        audio = to_16k(*c.read())[0]
        tracker = SpeechTracker(vad, engine.settings.vad_threshold)  # the server's trim, as bench_accuracy
        for k in range(0, len(audio), 1024):
            tracker.feed(audio[k:k + 1024])
        if tracker.speech is not None:
            audio = audio[:tracker.speech.end + int(engine.settings.vad_pad_after_s * 16000)]
        frames = engine._window_frames(len(audio))
        mel = log_mel(audio, loaded.model.dims.n_mels, n_frames=frames)[None]
        features = np.asarray(loaded.backend.encode(mel, loaded.context).features, dtype=np.float32).copy()
        language = "en" if corpus == "en" else c.name.split("_")[0]
        beam, _ = engine._beam_widths(Request(language=language), tok.multilingual)
        options = DecodeOptions(language=language, beam_size=beam, max_tokens=max_tokens_for(len(audio) / 16000))
        items.append((norm(c.reference, language), features, frames < N_FRAMES_30S, options))
    wers = []
    for seed in range(seeds + 1):
        rng = np.random.default_rng(seed)
        hyps, refs = [], []
        for ref, features, short, options in items:
            x = features if seed == 0 else (features * (1 + eps * rng.standard_normal(features.shape))).astype(np.float32)
            if runtime == "torch":
                import torch
                x = torch.from_numpy(x)
            cross = loaded.decoder.prepare(EncoderOutput(features=x, tail_cached=short, backend="cpu"))
            hyps.append(norm(tok.decode(loaded.decoder.decode(cross, options).tokens), options.language) or "<empty>")
            refs.append(ref)
        wers.append(100.0 * jiwer.wer(refs, hyps))
        print(f"{runtime} seed {seed}: WER {wers[-1]:.1f} %", file=sys.stderr, flush=True)
    return wers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", default="onnx,torch")
    ap.add_argument("--corpus", choices=("en", "ml"), default="en")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.corpus, args.seeds, args.eps)))
        return
    rows = {}
    for runtime in args.runtimes.split(","):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_noise", "--child", runtime, "--corpus", args.corpus,
                              "--seeds", str(args.seeds), "--eps", str(args.eps)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        rows[runtime] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nWER % on {args.corpus} (language given), encoder output x (1 + {args.eps:g} N(0,1)), seed 0 = as computed\n")
    print("| runtime | as computed | " + " | ".join(f"seed {s}" for s in range(1, args.seeds + 1)) + " | median | range |")
    print("|---|---|" + "---|" * args.seeds + "---|---|")
    for runtime, w in rows.items():
        print(f"| {runtime} | {w[0]:.1f} | " + " | ".join(f"{x:.1f}" for x in w[1:])
              + f" | {statistics.median(w):.1f} | {min(w):.1f}-{max(w):.1f} |")


if __name__ == "__main__":
    main()

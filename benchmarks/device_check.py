"""GPU check in one call: the CUDA encoder and decoder against the CPU path, then their speed.

Runs on a machine with an NVIDIA GPU and PyTorch (CUDA) but no internet. The
real weights do not fit the 60 MB that travels, so the model is written here,
random weights of base's real shape (``tests/fake_ct2_whisper.py``, the
CTranslate2 format our reader reads), and loaded twice: once on the CPU
(float32 encoder and decoder, the reference) and once on the device (the
server's CUDA path: float16 encoder, float32 decoder).

Checks (exit 1 and a MISMATCH line when one fails):
- encoder states, CPU vs device, on the same log-mel: cosine over the silence
  window, a full 30 s window and a 5 s utterance's short window with the
  silence cache;
- decoder: the CPU's greedy tokens teacher-forced through both; where the
  CPU's best token leads its second by more than ``--margin`` (so that
  float16 rounding cannot decide it) the device must pick the same one, and
  both greedy searches must agree up to the first step that is not so clear.
Then speed, median over ``--repeats``: single-stream latency of a 5 s
utterance through the whole engine (mel, encoder, decoder) on the device and
on the CPU, and batched throughput (``Engine.run`` with N requests, one batched
greedy decode). Random weights repeat one token, which the loop guard stops
after a few steps: the decoder share is smaller than with real speech.

``--device cpu`` is a dry run of the same code on the CPU (the test suite runs
it on a tiny shape); ``--perturb`` gives the device copy other weights, to see
the check fail. Carrying it to a GPU machine: README.md, "GPU check".
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_shapes import logits  # noqa: E402
from tests.fake_ct2_whisper import BASE_FULL, SHAPES, write_model  # noqa: E402
from wyoming_amanuensis.config import settings_from  # noqa: E402
from wyoming_amanuensis.decoding import DecodeOptions  # noqa: E402
from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel  # noqa: E402
from wyoming_amanuensis.pipeline import Engine  # noqa: E402
from wyoming_amanuensis.request import Job, Request  # noqa: E402

MIN_COSINE = 0.999  # float16 encoder against float32, same weights


def utterance(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: a few harmonic glides with an envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2
    return (0.1 * voice * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def cosine(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten().cpu(), torch.as_tensor(b).double().flatten().cpu()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def compare(ref: Engine, dev: Engine, audio: np.ndarray, margin: float, max_tokens: int) -> list[str]:
    """The mismatches, printing each comparison."""
    failures = []
    r, d = next(iter(ref.models.values())), next(iter(dev.models.values()))
    frames = ref._window_frames(len(audio))
    silent = log_mel(np.zeros(0, np.float32), r.model.dims.n_mels, n_frames=N_FRAMES_30S)[None]
    for label, mel, context in (
            ("silence 30 s", silent, False),
            ("utterance, full 30 s window", log_mel(audio, r.model.dims.n_mels, n_frames=N_FRAMES_30S)[None], False),
            ("utterance, short window + silence cache", log_mel(audio, r.model.dims.n_mels, n_frames=frames)[None],
             True)):
        a = r.backend.encode(mel, r.context if context else None).features
        b = d.backend.encode(mel, d.context if context else None).features
        c = cosine(a, b)
        ok = c >= MIN_COSINE and a.shape == b.shape
        print(f"encoder {label}: {tuple(a.shape)} cosine {c:.6f} {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"encoder {label}: cosine {c:.6f} < {MIN_COSINE}")

    mel = log_mel(audio, r.model.dims.n_mels, n_frames=frames)[None]
    enc_r, enc_d = r.backend.encode(mel, r.context), d.backend.encode(mel, d.context)
    enc_r.tail_cached = enc_d.tail_cached = True
    cross_r, cross_d = r.decoder.prepare(enc_r), d.decoder.prepare(enc_d)
    options = DecodeOptions(language="en", max_tokens=max_tokens)
    greedy_r, greedy_d = r.decoder.decode(cross_r, options), d.decoder.decode(cross_d, options)
    tok = r.model.tokenizer
    prefix = tok.sot_sequence("en")
    seq = prefix + greedy_r.tokens
    want, got = (torch.from_numpy(logits(x.decoder, c, seq, len(prefix))) for x, c in ((r, cross_r), (d, cross_d)))
    finite = torch.isfinite(want)
    diff = float((want[finite] - got[finite]).abs().max())
    top2 = want.topk(2, dim=-1).values
    leads = (top2[:, 0] - top2[:, 1]).tolist()
    clear = [lead > margin for lead in leads]
    same = (want.argmax(-1) == got.argmax(-1)).tolist()
    print(f"decoder logits, {len(leads)} steps teacher-forced: max |cpu - device| {diff:.4f}; "
          f"best token's lead per step {[round(x, 2) for x in leads]}")
    bad = [i for i, (c, s) in enumerate(zip(clear, same)) if c and not s]
    if not any(clear):
        failures.append(f"no step with a lead above {margin}: greedy agreement is undefined on these weights")
    if bad:
        failures.append(f"decoder: device picks another token at clear steps {bad}")
    defined = clear.index(False) if False in clear else len(clear)
    n = min(defined, len(greedy_r.tokens))
    agree = greedy_r.tokens[:n] == greedy_d.tokens[:n]
    print(f"greedy tokens cpu {greedy_r.tokens} device {greedy_d.tokens}: identical over the {n} clear steps "
          f"{'ok' if agree else 'MISMATCH'}")
    if not agree:
        failures.append("decoder: greedy tokens differ where defined")
    return failures


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def speed(engine: Engine, label: str, audio: np.ndarray, repeats: int, batches: list[int]) -> None:
    request = Request(language="en")
    last = {}

    def one():
        last["r"] = engine.transcribe(audio, 16000, request)

    ms = statistics.median(timed(one, repeats))
    t = last["r"].timings
    print(f"{label}: single stream, {len(audio) / 16000:.1f} s utterance: median {ms:.1f} ms "
          f"(last run: mel {t.mel_ms:.1f}, encoder {t.encoder_ms:.1f}, decoder {t.decoder_ms:.1f} ms; "
          f"{last['r'].tokens} tokens kept after the loop guard)")
    for n in batches:
        def batch():
            return engine.run([Job(audio=audio, request=request) for _ in range(n)])
        wall = statistics.median(timed(batch, max(1, repeats // 4), warmup=1))
        print(f"{label}: batch of {n}: median {wall:.1f} ms, {n * 1000.0 / wall:.1f} requests/s, "
              f"{n * len(audio) / 16000 * 1000.0 / wall:.0f} s of audio per s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the same code)")
    p.add_argument("--shape", default=BASE_FULL.name, choices=[BASE_FULL.name, *SHAPES],
                   help="model shape (default: base's real dimensions)")
    p.add_argument("--seconds", type=float, default=5.0, help="utterance length")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch", type=int, nargs="*", default=[8, 32], help="batch sizes for throughput")
    p.add_argument("--margin", type=float, default=0.5,
                   help="a step's greedy choice counts as defined when it leads by more than this (logits)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    p.add_argument("--perturb", action="store_true", help="device copy gets other weights: the check must fail")
    p.add_argument("--workdir", default=None, help="where to write the random model (default: a temp dir)")
    args = p.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"device_check: no CUDA device visible to torch {torch.__version__} "
              f"(built for CUDA {torch.version.cuda}); nothing checked", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    shape = BASE_FULL if args.shape == BASE_FULL.name else SHAPES[args.shape]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="device-check-"))
    ref_dir = write_model(work / shape.name, shape, "float16", seed=1)
    dev_dir = write_model(work / (shape.name + "-other"), shape, "float16", seed=2) if args.perturb else ref_dir
    print(f"device_check: torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else "")
          + f"; model {shape.name} (random weights, width {shape.width}, {shape.enc_layers}+{shape.dec_layers} "
          f"layers, {shape.n_mels} mels) written in {time.perf_counter() - t0:.1f} s")

    # The random models' prepared files stay in the work folder, out of the user's model cache.
    base = settings_from(model=str(ref_dir), encoder_backend="cpu", cpu_runtime="torch", int8_decoder=False,
                         threads=args.threads, beam_size_non_english=1, batch_decode_size=max(args.batch or [1]),
                         cache_dir=str(work / "cache"))
    ref = Engine.load(base)
    device_backend = "cuda" if args.device.startswith("cuda") else "cpu"
    dev = Engine.load(dataclasses.replace(base, model=str(dev_dir), encoder_backend=device_backend))
    name = next(iter(dev.models))
    print(f"loaded: reference on {ref.encoder_backend}, checked on {dev.encoder_backend} "
          f"(decoder on {dev.models[name].decoder.net.device})")

    audio = utterance(args.seconds)
    failures = compare(ref, dev, audio, args.margin, args.max_tokens)
    speed(dev, f"{device_backend} ({args.device})", audio, args.repeats, args.batch)
    if device_backend != "cpu":
        speed(ref, "cpu reference", audio, max(3, args.repeats // 4), args.batch[:1])
    print(f"device_check: {time.perf_counter() - t0:.1f} s in all")
    for f in failures:
        print(f"MISMATCH: {f}", file=sys.stderr)
    if failures:
        return 1
    print("device_check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

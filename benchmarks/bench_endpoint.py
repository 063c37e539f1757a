"""Server endpointing (--vad-endpointing) vs Home Assistant's own: when is a voice command declared done?

    .venv/bin/python -m benchmarks.bench_endpoint [--limit N] [--json FILE] [--ha-wheel PATH] [--noises a,b]

HA (2025.4.4) ends a command with ``VoiceCommandSegmenter(silence_seconds=S)`` fed one
10 ms chunk at a time with pymicro-vad's probability (-1 while its window fills, passed
through, so "not speech"). Its code is loaded from the HA wheel itself, not copied here,
so what is measured is what HA runs. Its rules beyond "S of silence":
- a command starts only after 0.3 s of probability > 0.2 (speech_seconds), and cannot end
  before 1.0 s after that start counts (command_seconds, counted from the 0.3 s);
- inside a command, silence (p <= 0.5) accumulates over the whole command: the counter
  is refilled only by 1.0 s of *uninterrupted* speech (reset_seconds), so short gaps
  between words add up towards S.
HA makes one MicroVad per pipeline run, so each clip gets a fresh one (as for a satellite
with on-device wake word, whose run starts at the STT stage).

Ours: ``SpeechTracker`` (Silero) + ``Utterance.endpoint_reached`` (at least
``--vad-min-speech-s`` of speech heard, not speaking, tracker.silence_s >= S), checked
after every incoming chunk. Two chunkings: 1024 samples (what wyoming-satellite sends)
and 10 ms (what HA's wyoming STT forwards: it writes each of its pipeline's 10 ms chunks
as one AudioChunk). "ours-1024, no minimum" sets the minimum to 0, to show how many early
cuts a blip before the command causes without it (why the option exists).

Each of bench_vad's short clips (both corpora), in each of its noises, is streamed as
0.5 s noise + clip + 4 s noise (the noise also under the speech), as 16-bit PCM.
Reference end of speech = bench_vad.energy_end on the clean clip. Per sensitivity S and
system: decision time - reference end (median, p95 of the decided), early cuts (decided
before the reference end: words lost), missed (no decision in the 4 s of tail; in HA a
command that never starts runs on to the segmenter's 15 s timeout).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.bench_vad import LEAD_S, NOISES, RATE, corpus, energy_end, i16, noise
from wyoming_amanuensis.config import Settings
from wyoming_amanuensis.utterance import Utterance
from wyoming_amanuensis.vad import FRAME, SileroVad, SpeechTracker

HA_WHEEL = Path("/tmp/hawheel/homeassistant-2025.4.4-py3-none-any.whl")
HA_DIR = "homeassistant/components/assist_pipeline/"
TAIL_S = 4.0
SENS = {"aggressive": 0.25, "default": 0.7, "relaxed": 1.25}
HA_CHUNK = 160  # HA's pipeline splits all audio into 10 ms chunks before its VAD
# system -> (chunk size after which the server checks the endpoint, speech span required first).
# (chunk samples, minimum speech heard): the server's default minimum, and none at all.
MIN_SPEECH_S = Settings().vad_min_speech_s
OURS = {"ours-1024": (1024, MIN_SPEECH_S), "ours-10ms": (160, MIN_SPEECH_S), "ours-1024, no minimum": (1024, 0.0)}


def table(title: str, head: list[str], rows: list[list]) -> None:
    """A markdown table (bench_vad's is plain aligned text), to paste into RESULTS.md as is."""
    print(f"\n{title}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def load_ha(wheel: Path):
    """HA's vad.py (+ the const.py it imports) as a throwaway package, straight from the wheel."""
    if not wheel.is_file():
        sys.exit(f"{wheel} not found; get it with:\n  python3.13 -m pip download --no-deps homeassistant==2025.4.4 "
                 f"-d {wheel.parent}\nand pass --ha-wheel PATH")
    tmp = Path(tempfile.mkdtemp(prefix="ha_vad_"))
    pkg = tmp / "ha_assist_pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    with zipfile.ZipFile(wheel) as z:
        for m in ("vad.py", "const.py"):
            (pkg / m).write_bytes(z.read(HA_DIR + m))
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module("ha_assist_pipeline.vad")
    finally:  # once imported the files are no longer needed
        sys.path.remove(str(tmp))
        shutil.rmtree(tmp)


def stream_pcm(audio: np.ndarray, name: str, cond: str) -> bytes:
    # bench_vad.mix has a 2 s tail; same noise recipe and seeding, 4 s tail.
    lead, tail = int(LEAD_S * RATE), int(TAIL_S * RATE)
    out = noise(*NOISES[cond], lead + len(audio) + tail, zlib.crc32(f"{name}/{cond}".encode()))
    out[lead:lead + len(audio)] += audio
    return i16(out)


def run_ha(pcm: bytes, ha, cpu: dict) -> dict:
    """S -> (decision s or None, held): held = S of silence was reached but the 1.0 s minimum delayed the end."""
    from pymicro_vad import MicroVad
    v = MicroVad()
    step = HA_CHUNK * 2
    c = time.process_time()
    probs = [v.process_10ms(pcm[i:i + step]) for i in range(0, len(pcm) - step + 1, step)]
    cpu["micro-vad"] += time.process_time() - c
    out = {}
    for s in SENS.values():
        seg, fire, held = ha.VoiceCommandSegmenter(silence_seconds=s), None, False
        chunk_s = HA_CHUNK / RATE  # as HA computes it: samples in the chunk / rate
        c = time.process_time()
        for i, p in enumerate(probs):
            if not seg.process(chunk_s, p):
                fire = None if seg.timed_out else (i + 1) * chunk_s
                break
            held |= seg.in_command and seg._silence_seconds_left <= 0
        cpu["ha-segmenter"] += time.process_time() - c
        out[s] = (fire, held)
    return out


def run_ours(pcm: bytes, svad: SileroVad, cpu: dict) -> dict:
    """system -> S -> (decision s or None, seconds of speech span heard by then)."""
    x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0  # as the server's Converter reads 16-bit PCM
    t = SpeechTracker(svad)
    # The tracker decides whole 512-sample frames whatever the chunking (it buffers the rest), so
    # its state after any chunk is its state after floor(samples / FRAME) frames: feed it frame by
    # frame once, record endpoint_reached after each, and read off the decision for each chunk size.
    minima = sorted({m for _, m in OURS.values()})
    ok, span = {(s, m): [False] for s in SENS.values() for m in minima}, [0.0]
    for k in range(0, len(x) - FRAME + 1, FRAME):
        c = time.process_time()
        t.feed(x[k:k + FRAME])
        cpu["silero"] += time.process_time() - c
        for s, m in ok:  # the server's own check, on a stand-in for the Utterance
            ok[s, m].append(Utterance.endpoint_reached(SimpleNamespace(endpoint_s=s, min_speech_s=m, tracker=t)))
        span.append((t.speech.end - t.speech.start) / RATE if t.speech else 0.0)

    def decide(size: int, s: float, m: float):
        e = next((e for e in range(size, len(x) + 1, size) if ok[s, m][e // FRAME]), None)
        return (None, None) if e is None else (e / RATE, span[e // FRAME])
    return {sys_: {s: decide(size, s, m) for s in SENS.values()} for sys_, (size, m) in OURS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="clips per corpus (0 = all short ones)")
    ap.add_argument("--json", type=Path, help="write every decision here")
    ap.add_argument("--ha-wheel", type=Path, default=HA_WHEEL)
    ap.add_argument("--noises", default=",".join(NOISES), help=f"subset of {','.join(NOISES)}")
    args = ap.parse_args()
    ha, svad = load_ha(args.ha_wheel), SileroVad()
    conds = args.noises.split(",")
    data = corpus(args.limit or None)
    refs = {n: LEAD_S + float(energy_end(a)) for n, (_, a) in data.items()}
    systems = ["HA micro-vad", *OURS]
    rows = []  # (system, S, clip, noise, decision or None, ref, held, speech span heard by the decision)
    cpu, audio_s = {"micro-vad": 0.0, "ha-segmenter": 0.0, "silero": 0.0}, 0.0
    t0 = time.perf_counter()
    for n, (_, a) in data.items():
        for cond in conds:
            pcm = stream_pcm(a, n, cond)
            audio_s += len(pcm) / 2 / RATE
            for s, (fire, held) in run_ha(pcm, ha, cpu).items():
                rows.append((systems[0], s, n, cond, fire, refs[n], held, None))
            for sys_, per in run_ours(pcm, svad, cpu).items():
                rows += [(sys_, s, n, cond, fire, refs[n], False, heard) for s, (fire, heard) in per.items()]
    print(f"{len(data)} clips x {len(conds)} noises ({', '.join(conds)}), {audio_s:.0f} s of audio streamed, "
          f"{time.perf_counter() - t0:.0f} s wall; stream = {LEAD_S} s noise + clip + {TAIL_S} s noise")

    def stats(sel: list) -> dict:
        lat = np.array([r[4] - r[5] for r in sel if r[4] is not None])
        early = int(sum(r[4] is not None and r[4] < r[5] for r in sel))
        miss = int(sum(r[4] is None for r in sel))
        return {"n": len(sel), "med": float(np.median(lat)) if lat.size else math.nan,
                "p95": float(np.percentile(lat, 95)) if lat.size else math.nan,
                "early": early, "early%": 100 * early / max(1, len(sel)), "miss": miss,
                "miss%": 100 * miss / max(1, len(sel)), "held": int(sum(r[6] for r in sel))}

    pooled, by_noise, summary = [], [], {}
    for s in SENS.values():
        for sys_ in systems:
            sel = [r for r in rows if r[0] == sys_ and r[1] == s]
            m = summary[f"{sys_} S={s}"] = stats(sel)
            pooled.append([f"{s}", sys_, m["n"], f"{m['med']:+.3f}", f"{m['p95']:+.3f}", f"{m['early']} ({m['early%']:.1f}%)",
                           f"{m['miss']} ({m['miss%']:.1f}%)", m["held"] if sys_ == systems[0] else "-"])
            per_cond = [stats([r for r in sel if r[3] == c]) for c in conds]
            by_noise.append([f"{s}", sys_] + [f"{k['med']:+.2f} / {k['early']} / {k['miss']}" for k in per_cond])
    table("1. decision - reference end of speech (s), all noises pooled; early = decided before the reference end; "
          "missed = no decision in the 4 s tail; held (HA) = S of silence reached but the 1.0 s command minimum held the end",
          ["S", "system", "n", "median", "p95", "early cuts", "missed", "held"], pooled)
    table("2. by noise: median (s) / early cuts / missed", ["S", "system", *conds], by_noise)
    per_s = {"micro-vad": audio_s, "ha-segmenter": audio_s * len(SENS), "silero": audio_s}
    table("3. CPU (process time) per second of audio, rough: the machine is shared",
          ["part", "CPU ms per s audio", "note"],
          [["micro-vad", f"{1000 * cpu['micro-vad'] / audio_s:.2f}", "pymicro-vad process_10ms, 100 calls/s"],
           ["ha-segmenter", f"{1000 * cpu['ha-segmenter'] / per_s['ha-segmenter']:.2f}", "VoiceCommandSegmenter.process, per S"],
           ["silero", f"{1000 * cpu['silero'] / audio_s:.2f}", "SpeechTracker.feed (onnxruntime, 1 thread), 31 frames/s"]])
    print("\n4. early cuts: clip [noise decision-ref s, ours: speech span heard by the decision s, ...]")
    for s in SENS.values():
        for sys_ in systems:
            cut = {}
            for r in rows:
                if r[0] == sys_ and r[1] == s and r[4] is not None and r[4] < r[5]:
                    heard = "" if r[7] is None else f" heard {r[7]:.2f}"
                    cut.setdefault(r[2], []).append(f"{r[3]} {r[4] - r[5]:+.2f}{heard}")
            print(f"\nS={s} {sys_}: {len(cut)} clips" + "".join(f"\n  {n} [{', '.join(v)}]" for n, v in sorted(cut.items())))
    if args.json:
        keys = ("system", "S", "clip", "noise", "decision_s", "ref_s", "held", "heard_s")
        args.json.write_text(json.dumps({"summary": summary, "cpu_ms_per_s": {k: 1000 * v / per_s[k] for k, v in cpu.items()},
                                         "rows": [dict(zip(keys, r)) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()

"""Transcribe only the VAD's speech (plus padding) instead of the whole utterance: which padding, what it buys.

    .venv/bin/python -m benchmarks.bench_trim [--limit N] [--json FILE] [--no-loud]

Every clip of corpus/ and corpus_ml/ is sent as a satellite would: 0.3 s of noise,
the clip with the same noise under it, then T s of noise (T = 0.7, Home Assistant's
default silence before audio-stop). Noise is seeded per clip and cut from one long
draw, so the lead and the noise under the speech are the same sample for sample
whatever T is. Main noise: bench_realtime's quiet room (-55 dBFS); louder: bench_vad's
pink at -40 dBFS. The VAD is the server's (``SpeechTracker`` fed 1024-sample chunks);
the engine is ours, base model, 2 threads, language as Home Assistant sends it.

Systems: ``untrimmed`` (whole audio, today's server), ``trim b/a`` (the speech padded
b s before and a s after, whole audio where the VAD found none) and ``keep start/0.5``
(only the tail cut, 0.5 s after the speech). Sections:
1. sweep per noise: WER (English normaliser for corpus/, Whisper-style per-language
   normalisers with number folding where text2num has the language), transcripts changed
   vs untrimmed, median stage ms, clips without speech; clips the best pad made worse.
2. trailing noise T in 0.25/0.7/1.25/2.0 s: untrimmed, the best pad, keep start.
3. fallback: clean clips attenuated 0/-20/-30/-40 dB over the same noise floor, and
   pure noise: does the VAD miss speech Whisper would hear, and what does noise give?
--limit N takes N evenly spaced clips from each corpus.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from pathlib import Path

import jiwer
import numpy as np
from whisper_normalizer import international as intl

from benchmarks.bench_realtime import CHUNK, RATE, room_noise
from benchmarks.bench_vad import ML_DIR, energy_end, noise
from benchmarks.corpus import CORPUS_DIR, clips, normalize
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.pipeline import Engine
from wyoming_amanuensis.request import Request
from wyoming_amanuensis.vad import SileroVad, SpeechTracker

LEAD_S, MAIN_T, TAILS = 0.3, 0.7, (0.25, 0.7, 1.25, 2.0)
# One pad varies while the other stays at 0.3 s: 7 settings, the (0.3, 0.3) centre once.
PADS = [(0.3, 0.3)] + [(b, 0.3) for b in (0.1, 0.2, 0.5)] + [(0.3, a) for a in (0.1, 0.2, 0.5)]
NOISES = {"room-55": lambda n, seed: room_noise(n / RATE + 0.01, -55, seed)[:n],
          "pink-40": lambda n, seed: noise("pink", -40, n, seed)}
# A pad before longer than any utterance: the window keeps the start and only the tail is cut.
KEEP_START = (30.0, 0.5)
LEVELS_DB = (0, -20, -30, -40)
PURE_NOISES = 20


def label(pad) -> str:
    if pad is None:
        return "untrimmed"
    return f"keep start/{pad[1]:g}" if pad[0] >= KEEP_START[0] else f"trim {pad[0]:g}/{pad[1]:g}"


# ------------------------------------------------------------------ words
class _Latin(intl._LatinTextNormalizer):  # the library's French/Spanish rules, for text2num's other languages
    def __init__(self, language: str) -> None:
        self.language = language


_NORMS = {"fr": intl.FrenchTextNormalizer(), "es": intl.SpanishTextNormalizer(), "ru": intl.RussianTextNormalizer(),
          **{lang: _Latin(lang) for lang in ("de", "it", "nl", "pt")}}
_PLAIN = intl._NonLatinTextNormalizer()  # ca, cs, pl, ro: case and punctuation only (text2num lacks them)


def norm(text: str, lang: str) -> str:
    return normalize(text) if lang == "en" else _NORMS.get(lang, _PLAIN)(text)


def errors(items, texts) -> tuple[int, int]:
    """(word errors, reference words) over clips, each scored with its own language's normaliser."""
    if not items:
        return 0, 0
    o = jiwer.process_words([norm(c["ref"], c["lang"]) for c in items], [norm(t, c["lang"]) for c, t in zip(items, texts)])
    return o.substitutions + o.deletions + o.insertions, sum(len(norm(c["ref"], c["lang"]).split()) for c in items)


def wer(items, texts) -> str:
    e, n = errors(items, texts)
    return f"{100 * e / n:.1f} %" if n else "n/a"


# ------------------------------------------------------------------ audio
def load(limit: int) -> list[dict]:
    out = []
    for d in (CORPUS_DIR, ML_DIR):
        cs = clips(d)
        if limit:
            cs = [cs[round(i * len(cs) / limit)] for i in range(min(limit, len(cs)))]
        for c in cs:  # corpus_ml names are <lang>_<nnn> (pt_PT_001: Whisper's pt)
            out.append({"name": c.name, "ref": c.reference, "audio": to_16k(*c.read())[0],
                        "lang": "en" if d == CORPUS_DIR else c.name.split("_")[0]})
    return out


def scene(name: str, clean: np.ndarray, cond: str, tail_s: float, gain_db: float = 0.0) -> np.ndarray:
    lead = int(LEAD_S * RATE)
    longest = lead + len(clean) + int(max(TAILS) * RATE)  # one draw per clip: only its length varies with T
    out = NOISES[cond](longest, zlib.crc32(f"{name}/{cond}".encode()))[: lead + len(clean) + int(tail_s * RATE)].copy()
    out[lead:lead + len(clean)] += clean * np.float32(10 ** (gain_db / 20))
    return out


def speech_of(vad: SileroVad, audio: np.ndarray):
    t = SpeechTracker(vad)
    for i in range(0, len(audio), CHUNK):  # as the server gets it
        t.feed(audio[i:i + CHUNK])
    return t.speech


class Runner:
    """The engine, with results cached by exact input so shared configurations are run once."""

    def __init__(self, threads: int) -> None:
        self.engine, self.vad, self.cache, self.calls = Engine.load(settings_from(threads=threads)), SileroVad(), {}, 0

    def transcribe(self, key, audio: np.ndarray, lang) -> dict:
        if key not in self.cache:
            r = self.engine.transcribe(audio, RATE, Request(language=lang))
            t = r.timings
            self.cache[key] = {"text": r.text, "enc": t.encoder_ms, "dec": t.decoder_ms, "total": t.total_ms}
            self.calls += 1
        return self.cache[key]

    def serve(self, c: dict, cond: str, tail_s: float, pads, gain_db: float = 0.0, lang: object = "", tag: str = "") -> dict:
        """One clip as sent -> {system label: record}. lang "" = the clip's own, None = auto-detect;
        a new ``tag`` runs the engine again rather than reuse a cached result (for timings taken side by side)."""
        lang = c["lang"] if lang == "" else lang
        audio = scene(c["name"], c["audio"], cond, tail_s, gain_db)
        sp = speech_of(self.vad, audio)
        out = {}
        for pad in pads:
            w = (0, len(audio)) if pad is None or sp is None else sp.padded(*pad, len(audio))
            r = self.transcribe((c["name"], cond, tail_s, gain_db, w, lang, tag), audio[w[0]:w[1]], lang)
            out[label(pad)] = {**r, "window": w, "fallback": pad is not None and sp is None,
                               "span": None if sp is None else (sp.start, sp.end)}
        return out


# ------------------------------------------------------------------ report
def table(head: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(f"{x:.0f}" if isinstance(x, float) else str(x) for x in r) + " |")


def med(recs, k) -> float:
    return statistics.median(r[k] for r in recs)


def sweep(run: Runner, items, cond: str) -> dict[str, list]:
    per = {label(p): [] for p in [None] + PADS + [KEEP_START]}
    for c in items:
        for k, v in run.serve(c, cond, MAIN_T, [None] + PADS + [KEEP_START]).items():
            per[k].append(v)
    return per


def report_sweep(items, per: dict, cond: str, auto: dict) -> None:
    en = [i for i, c in enumerate(items) if c["lang"] == "en"]
    ml = [i for i, c in enumerate(items) if c["lang"] != "en"]
    langs = sorted({c["lang"] for c in items} - {"en"})
    sub = lambda idx, recs: ([items[i] for i in idx], [recs[i]["text"] for i in idx])  # noqa: E731
    base = per["untrimmed"]
    print(f"\n### Noise {cond}, T = {MAIN_T} s ({len(en)} English + {len(ml)} multilingual clips)\n")
    rows = []
    for name, recs in per.items():
        changed = sum(r["text"] != b["text"] for r, b in zip(recs, base))
        changed_w = sum(norm(r["text"], c["lang"]) != norm(b["text"], c["lang"]) for r, b, c in zip(recs, base, items))
        d = [errors([c], [r["text"]])[0] - errors([c], [b["text"]])[0] for r, b, c in zip(recs, base, items)]
        empty = sum(not norm(r["text"], c["lang"]) for r, c in zip(recs, items))
        rows.append([name, wer(items, [r["text"] for r in recs]), wer(*sub(en, recs)), wer(*sub(ml, recs)),
                     wer([items[i] for i in ml], [r["text"] for r in auto[name]]) if name in auto else "",
                     f"{changed} / {changed_w}", f"{sum(x > 0 for x in d)} / {sum(x < 0 for x in d)}", empty,
                     med(recs, "enc"), med(recs, "dec"), med(recs, "total"),
                     sum(r["fallback"] for r in recs) if name != "untrimmed" else ""])
    table(["system", "WER all", "WER en", "WER ml (lang given)", "WER ml (auto)", "changed vs untrimmed (text / words)",
           "clips worse / better", "empty",
           "enc ms", "dec ms", "total ms", "no speech (fallback)"], rows)
    print()
    n = {lg: [i for i in ml if items[i]["lang"] == lg] for lg in langs}
    table(["WER by language"] + [f"{lg} ({len(n[lg])})" for lg in langs],
          [[name] + [wer(*sub(n[lg], recs)) for lg in langs] for name, recs in per.items()])
    ends = [LEAD_S + energy_end(c["audio"]) for c in items]  # bench_vad's reference end of speech
    short = sum(r["window"][1] / RATE < ends[i] - 0.05 for k, recs in per.items() if k != "untrimmed"
                for i, r in enumerate(recs))
    print(f"\nWindows (all trims) ending over 0.05 s before the clip's energy end: {short} of {len(items) * (len(per) - 1)}")


def worse_clips(items, per: dict, name: str) -> None:
    """Clips where ``name`` has more word errors than untrimmed, its window against bench_vad's energy end
    (only the end has a reference: most clips open on a click an energy start would take for speech)."""
    ends = [LEAD_S + energy_end(c["audio"]) for c in items]
    rows = []
    for i, c in enumerate(items):
        if errors([c], [per[name][i]["text"]])[0] <= errors([c], [per["untrimmed"][i]["text"]])[0]:
            continue
        sp, w = per[name][i]["span"], per[name][i]["window"]
        s = lambda a, b: f"{a / RATE - LEAD_S:.2f}-{b / RATE - LEAD_S:.2f}"  # noqa: E731
        rows.append([c["name"], "none" if sp is None else s(*sp), s(*w), f"{ends[i] - LEAD_S:.2f}",
                     f"{len(c['audio']) / RATE:.2f}", c["ref"], per["untrimmed"][i]["text"], per[name][i]["text"]])
    print(f"\nClips with more word errors under {name} than untrimmed ({len(rows)}); s from the clip's start:\n")
    table(["clip", "VAD speech", "window", "energy end", "clip s", "reference", "untrimmed", name], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="N evenly spaced clips from each corpus (0 = all)")
    ap.add_argument("--json", type=Path, help="write every record here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-loud", action="store_true", help="skip the pink -40 dBFS sweep")
    args = ap.parse_args()
    t0 = time.perf_counter()
    items = load(args.limit)
    run = Runner(args.threads)
    run.engine.transcribe(items[0]["audio"], RATE, Request(language="en"))  # warm-up, not timed
    main_cond, keep = "room-55", label(KEEP_START)
    ml = [c for c in items if c["lang"] != "en"]
    out = {"clips": [{k: c[k] for k in ("name", "lang", "ref")} for c in items]}

    # 1. the sweep; the best of the 7 pads is chosen on the main noise (fewest word errors, then median total ms).
    per = sweep(run, items, main_cond)
    trims = [label(p) for p in PADS]
    best_label = min(trims, key=lambda k: (errors(items, [r["text"] for r in per[k]])[0], med(per[k], "total")))
    best = PADS[trims.index(best_label)]
    systems = [None, best, KEEP_START]
    auto = {label(p): [run.serve(c, main_cond, MAIN_T, [p], lang=None)[label(p)] for c in ml] for p in systems}
    print("\n## 1. Padding sweep")
    report_sweep(items, per, main_cond, auto)
    print(f"\nbest of the 7 pads on {main_cond}: {best_label} (fewest word errors over both corpora, then median total ms)")
    worse_clips(items, per, best_label)
    out["sweep"], out["auto"] = {main_cond: per}, auto
    if not args.no_loud:
        out["sweep"]["pink-40"] = loud = sweep(run, items, "pink-40")
        report_sweep(items, loud, "pink-40", {})
    print(f"\n[{time.perf_counter() - t0:.0f} s, {run.calls} engine calls]")

    # 2. trailing noise: the VAD is causal and the window ends at the speech, so trimmed words should not move.
    # Clip by clip, every T in turn and all run afresh: a drift in the machine's load hits every T alike.
    print(f"\n## 2. Trailing noise T ({main_cond})\n")
    tails = {T: [] for T in TAILS}
    for c in items:
        for T in TAILS:
            tails[T].append(run.serve(c, main_cond, T, systems, tag="tails"))
    rows = []
    for name in map(label, systems):
        same = sum(len({norm(tails[T][i][name]["text"], c["lang"]) for T in TAILS}) == 1 for i, c in enumerate(items))
        rows.append([name, f"{same}/{len(items)} ({100 * same / len(items):.0f} %)"]
                    + [f"{med([r[name] for r in tails[T]], 'total'):.0f} ms, {wer(items, [r[name]['text'] for r in tails[T]])}"
                       for T in TAILS])
    table(["system", "words identical across T"] + [f"T={T:g}: total ms, WER all" for T in TAILS], rows)
    out["tails"] = {str(T): v for T, v in tails.items()}

    # 3. fallback: does "no speech" hide words Whisper hears? The noise floor stays put; the clip gets quieter.
    # The 0 dB speech start stands in for where the words begin (the clips' energy onset is a click).
    print(f"\n## 3. Quiet speech and the fallback ({main_cond}, T = {MAIN_T} s)\n")
    rows, out["levels"] = [], {}
    for db in LEVELS_DB:
        recs = [run.serve(c, main_cond, MAIN_T, systems, gain_db=db) for c in items]
        if db == 0:  # the first level
            at0 = recs
        none = [i for i, r in enumerate(recs) if r[best_label]["fallback"]]
        found = [i for i, r in enumerate(recs) if r[best_label]["span"] and at0[i][best_label]["span"]]
        shift = [((recs[i][best_label]["span"][0] - at0[i][best_label]["span"][0]) / RATE,
                  (at0[i][best_label]["span"][1] - recs[i][best_label]["span"][1]) / RATE) for i in found]
        late = sum(recs[i][best_label]["window"][0] > at0[i][best_label]["span"][0] + 0.05 * RATE for i in found)
        heard = sum(bool(norm(recs[i]["untrimmed"]["text"], items[i]["lang"])) for i in none)
        empty = [sum(not norm(r[k]["text"], c["lang"]) for r, c in zip(recs, items)) for k in map(label, systems)]
        rows.append([f"{db} dB", f"{len(none)}/{len(items)} ({100 * len(none) / len(items):.1f} %)", f"{heard}/{len(none)}",
                     wer([items[i] for i in none], [recs[i]["untrimmed"]["text"] for i in none]),
                     " / ".join(f"{statistics.median(x):.2f}" for x in zip(*shift)) if shift else "n/a", late,
                     *[wer(items, [r[k]["text"] for r in recs]) for k in map(label, systems)], " / ".join(map(str, empty))])
        out["levels"][str(db)] = recs
    table(["clip level", "VAD: no speech", "of those, Whisper heard words", "their WER (whole audio)",
           "speech found: starts later / ends earlier than at 0 dB (median s)",
           f"{best_label} windows starting after the 0 dB speech start", "WER all: untrimmed",
           f"{best_label} + fallback", f"{keep} + fallback", "empty transcripts (same order)"], rows)

    print(f"\nPure noise ({PURE_NOISES} draws per noise, {LEAD_S} + 0.8..3 + {MAIN_T} s):\n")
    rows, rng = [], np.random.default_rng(11)
    lengths = [int((LEAD_S + rng.uniform(0.8, 3.0) + MAIN_T) * RATE) for _ in range(PURE_NOISES)]
    for cond in NOISES:
        found, texts = 0, {"en": [], None: []}
        for k, n in enumerate(lengths):
            audio = NOISES[cond](n, zlib.crc32(f"pure{k}/{cond}".encode()))
            found += speech_of(run.vad, audio) is not None
            for lang in texts:
                texts[lang].append(run.transcribe((f"pure{k}", cond, lang), audio, lang)["text"])
        for lang, ts in texts.items():
            words = [t for t in ts if norm(t, "en")]
            rows.append([cond, lang or "auto", f"{found}/{len(lengths)}", f"{len(words)}/{len(ts)}",
                         "; ".join(sorted(set(words))) or "(all empty)"])
    table(["noise", "language", "VAD found speech", "non-empty transcripts", "what Whisper wrote"], rows)
    print(f"\n[{time.perf_counter() - t0:.0f} s, {run.calls} engine calls]")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

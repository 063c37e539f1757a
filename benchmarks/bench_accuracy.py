"""Accuracy per language against faster-whisper, and which part of our pipeline costs it (issue 11).

    .venv/bin/python -m benchmarks.bench_accuracy [--systems a,b,...] [--languages fr,nl,en] [--corpus ml,en]
                                                  [--modes given,auto] [--limit N] [--json FILE]
                                                  [--names [CONFIG,...] | --no-names]

Every clip of corpus_ml/ (11 languages) and corpus/ (English) is transcribed twice, with its
language given and with it auto-detected, by each system in its own child process (one
warm-up clip, then all items; CTranslate2's spinning OpenMP threads would otherwise slow
torch down, see bench_engine). Systems: ``amanuensis`` as the server runs it (the VAD-trimmed
window, see bench_trim), variants that each undo one suspected cause (greedy search, the short
window, the int8 decoder, the trim) and their combinations, and faster-whisper on the same
bundled base weights, int8, beam 5 (wyoming-faster-whisper's reference setting) and beam 1.
``--systems`` also takes ad hoc ``NAME:option=value,...`` Amanuensis variants (config.py names).

Printed per language and pooled: WER, CER, exact commands (normalised hypothesis == normalised
reference) and, in auto mode, the language-ID rate; then median compute ms per clip (English:
short commands only) with its ratio to faster-whisper beam 5; then each system's WER gap to
faster-whisper beam 5 per language with a 90 % paired bootstrap interval and the number of clips
with fewer / more errors, which says whether a language's 5-42 clips resolve a gap of a point.
Text is normalised with Whisper's English normaliser for corpus/ (benchmarks.corpus.normalize)
and its basic one (case, punctuation) elsewhere. The corpus_ml references write numbers as digits where a transcript may spell them
out: the basic normaliser does not fold them, so those clips cost every system alike; compare
systems side by side, and see the "no-digit" column for the WER without them.
--limit N keeps the first N clips of each language.

``--dither N`` runs every clip N times: as recorded, then N-1 times with Gaussian noise of one
16-bit step (3e-5 of full scale, below what any microphone records) added to its samples, each
copy the same for every system. A few clips in each language sit on a knife edge where float
rounding decides the reading (RESULTS.md, session 8); their scores pooled over the copies are each
system's expected WER on these commands rather than one draw, and the bootstrap resamples clips
(each with all its copies), so the intervals are not narrowed by the copies.

Names table (issue 11; ``--names`` runs only it, a run with English ends with it unless ``--no-names``):
every short English command carries one home's names list (benchmarks/home_names.py: the names the
commands use plus ~100 others) as the request's names, under names-none (no names), names-prompt
(names in Whisper's prompt, wyoming-faster-whisper's way), names-boost (token-trie bonus), names-snap
(the defaults) and faster-whisper beam 5 without and with the names as initial_prompt (what
wyoming-faster-whisper 3.8.1 does). Printed: exact commands with and without a name, WER, false
insertions (a home name in the hypothesis but not the reference; "biasing's": those the names-free row
lacks), compute ms, mean names_ms, and the mean-latency cost against the names-free row; "paired
cost": each command also run without the names right after in the same process (Amanuensis rows),
since two processes differ by a few per cent on their own. ``--names --names-corpus ml`` runs the same table on
corpus_ml, each command with its language given and its language's home (home_names_ml: the names
its commands use, declined where the language declines them, among ~140 others).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Optional

import jiwer
import numpy as np
from whisper_normalizer.basic import BasicTextNormalizer

from benchmarks.bench_engine import materialise_model, parse_variant
from benchmarks.corpus import CORPUS_DIR, SHORT_COMMAND_S, clips, normalize
from benchmarks.home_names import NAMES_ML, home_names, home_names_ml, names_in

ML_DIR = CORPUS_DIR.parent / "corpus_ml"
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "fw-beam5"  # what every latency and the acceptance columns compare against

# name -> how to build it. Amanuensis entries: config overrides, and whether the window is trimmed
# by the VAD as the server does (the Engine itself never trims; utterance.py does).
SYSTEMS: dict[str, dict] = {
    "amanuensis": {"kind": "amanuensis", "settings": {}, "trim": True},
    "am-notrim": {"kind": "amanuensis", "settings": {}, "trim": False},
    "am-beam5": {"kind": "amanuensis", "settings": {"beam_size": 5}, "trim": True},
    "am-full": {"kind": "amanuensis", "settings": {"fast_decoder": False}, "trim": True},
    "am-float": {"kind": "amanuensis", "settings": {"int8_decoder": False}, "trim": True},
    "am-float-beam5": {"kind": "amanuensis", "settings": {"int8_decoder": False, "beam_size": 5}, "trim": True},
    "am-full-float": {"kind": "amanuensis", "settings": {"fast_decoder": False, "int8_decoder": False}, "trim": True},
    "am-full-float-beam5": {"kind": "amanuensis", "trim": True,
                            "settings": {"fast_decoder": False, "int8_decoder": False, "beam_size": 5}},
    "fw-beam5": {"kind": "faster-whisper", "beam": 5, "compute": "int8"},
    "fw-beam1": {"kind": "faster-whisper", "beam": 1, "compute": "int8"},
    # faster-whisper decoded as we decode (no timestamp tokens, no temperature fallback): not run by
    # default; it tells whether what is left between am-full-float-beam5 and fw-beam5 is those two
    "fw-beam5-plain": {"kind": "faster-whisper", "beam": 5, "compute": "int8",
                       "options": {"without_timestamps": True, "temperature": 0.0}},
    # faster-whisper in float32 (its encoder and decoder not int8), as decoded by default and as we
    # decode: whether a reading it differs from us on comes from its int8 arithmetic. Not run by default.
    "fw-beam5-f32": {"kind": "faster-whisper", "beam": 5, "compute": "float32"},
    "fw-beam5-f32-plain": {"kind": "faster-whisper", "beam": 5, "compute": "float32",
                           "options": {"without_timestamps": True, "temperature": 0.0}},
}

# English figures of RESULTS.md's issue 9 re-check (bench_engine, language en, untrimmed clean
# clips, median ms over short commands): the same configuration as am-notrim / fw-beam5 here.
RESULTS_EN = {"am-notrim": ("amanuensis", 6.6, 104.0), "fw-beam5": ("faster-whisper int8 beam5", 5.6, 886.0)}


# ------------------------------------------------------------------ clips
def load_items(corpora: list[str], languages: Optional[set], limit: int, modes: list[str],
               dither: int = 1) -> list[dict]:
    """Work items: one clip with the request options of one mode, ``dither`` copies of each (copy 0
    as recorded). ``options`` are Request fields (language here; a second table, e.g. names per
    clip, builds its own items with more)."""
    base = []
    for corpus in corpora:
        for c in clips(ML_DIR if corpus == "ml" else CORPUS_DIR):
            # corpus_ml names are <prefix>_<nnn>; pt_PT is Whisper's pt
            lang = c.name.split("_")[0] if corpus == "ml" else "en"
            if languages and lang not in languages:
                continue
            if limit and sum(b["lang"] == lang for b in base) >= limit:
                continue
            base.append({"clip": c.name, "path": str(c.path), "ref": c.reference, "lang": lang, "corpus": corpus,
                         "short": c.seconds <= SHORT_COMMAND_S})
    return [{**b, "mode": mode, "dither": d, "options": {"language": b["lang"] if mode == "given" else None}}
            for mode in modes for d in range(dither) for b in base]


# ------------------------------------------------------------------ child: one system over items
def run_system(name: str, spec: dict, items: list[dict], threads: int, model: str = "base") -> list[dict]:
    """Run one system in a fresh process over ``items`` (each with ``path`` and ``options``);
    returns per item {"text", "language" (given or detected), "ms" (compute wall time), "names_ms"}."""
    payload = json.dumps({"name": name, "spec": spec, "threads": threads, "model": model,
                          "items": [{"path": i["path"], "options": i["options"], "dither": i.get("dither", 0)}
                                    for i in items]})
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_accuracy", "--child"], input=payload,
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _amanuensis(spec: dict, threads: int, model: str):
    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.pipeline import Engine
    from wyoming_amanuensis.request import Request
    from wyoming_amanuensis.vad import SileroVad, SpeechTracker

    engine = Engine.load(settings_from(model=model, encoder_backend="cpu", threads=threads, **spec["settings"]))
    vad = SileroVad() if spec.get("trim") else None

    def window(audio):
        """The server's trim (Utterance.window): from the start to 0.5 s after the last speech. It runs
        while the audio streams in, so it is done here before the clock starts."""
        if vad is None:
            return audio
        tracker = SpeechTracker(vad, engine.settings.vad_threshold)
        for k in range(0, len(audio), 1024):  # in a satellite's chunks, as the server is fed
            tracker.feed(audio[k:k + 1024])
        if tracker.speech is None:
            return audio
        return audio[:tracker.speech.end + int(engine.settings.vad_pad_after_s * 16000)]

    def run(audio, options: dict):
        # options are Request fields as the server would fill them (language; a names table adds its own)
        r = engine.transcribe(audio, 16000, Request(**{k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in options.items()}))
        return r.text, r.language, r.timings.names_ms

    return window, run


def _faster_whisper(spec: dict, threads: int, model: str, tmp: Path):
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(materialise_model(model, tmp / model)), device="cpu", compute_type=spec["compute"],
                      cpu_threads=threads)

    def run(audio, options: dict):
        # names -> initial_prompt, as wyoming-faster-whisper 3.8.1 does; other request options are not mapped
        segments, info = fw.transcribe(audio, beam_size=spec["beam"], language=options.get("language"),
                                       initial_prompt=", ".join(options.get("names") or ()) or None,
                                       **spec.get("options", {}))
        # the generator decodes: consume it here
        return " ".join(s.text for s in segments).strip(), info.language, 0.0

    return (lambda audio: audio), run


DITHER = 1 / 32768  # one 16-bit step


def dithered(audio: np.ndarray, path: str, seed: int) -> np.ndarray:
    """Copy ``seed`` of a clip: as recorded for 0, else with one 16-bit step of Gaussian noise,
    drawn from the clip's name and the seed so that every system hears the same copy."""
    if not seed:
        return audio
    rng = np.random.default_rng([seed, zlib.crc32(Path(path).name.encode())])
    return (audio + DITHER * rng.standard_normal(audio.shape)).astype(np.float32)


def child_main() -> None:
    from wyoming_amanuensis.audio import to_16k
    import soundfile as sf

    job = json.loads(sys.stdin.read())
    spec, threads, model = job["spec"], job["threads"], job["model"]
    with tempfile.TemporaryDirectory() as tmp:
        if spec["kind"] == "amanuensis":
            window, run = _amanuensis(spec, threads, model)
        else:
            window, run = _faster_whisper(spec, threads, model, Path(tmp))
        audio = [window(dithered(to_16k(*sf.read(i["path"], dtype="float32"))[0], i["path"], i["dither"]))
                 for i in job["items"]]
        run(audio[0], job["items"][0]["options"])  # warm-up: first-call allocations are not what a user waits for
        out = []
        for a, item in zip(audio, job["items"]):
            t0 = time.perf_counter()
            text, lang, names_ms = run(a, item["options"])
            out.append({"text": text, "language": lang, "ms": (time.perf_counter() - t0) * 1000.0,
                        "names_ms": names_ms})
    print(json.dumps(out))


# ------------------------------------------------------------------ scoring
_BASIC = BasicTextNormalizer()


def norm(text: str, lang: str) -> str:
    # split/join: the basic normaliser leaves a space where trailing punctuation was, which would
    # fail an exact match that WER (split on whitespace) does not see
    return " ".join((normalize(text) if lang == "en" else _BASIC(text)).split())


def score(items: list[dict], recs: list[dict]) -> dict:
    """Pooled WER/CER (errors over all reference words/characters), exact-command and language-ID rates."""
    pairs = [(norm(i["ref"], i["lang"]), norm(r["text"], i["lang"]), i, r) for i, r in zip(items, recs)]
    pairs = [p for p in pairs if p[0]]
    if not pairs:
        return {}
    refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
    plain = [(r, h) for r, h, i, _ in pairs if not any(ch.isdigit() for ch in i["ref"])]
    return {"n": len(pairs), "wer": 100 * jiwer.wer(refs, hyps), "cer": 100 * jiwer.cer(refs, hyps),
            "wer_nodigit": 100 * jiwer.wer(*map(list, zip(*plain))) if plain else float("nan"),
            "exact": 100 * sum(r == h for r, h in zip(refs, hyps)) / len(pairs),
            "langid": 100 * sum(r["language"] == i["lang"] for _, _, i, r in pairs) / len(pairs)}


def clip_errors(items: list[dict], recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: word errors (substitutions, deletions, insertions) and reference words."""
    errors, words = [], []
    for i, r in zip(items, recs):
        ref, hyp = norm(i["ref"], i["lang"]), norm(r["text"], i["lang"])
        if ref:
            out = jiwer.process_words(ref, hyp)
            errors.append(out.substitutions + out.deletions + out.insertions)
            words.append(len(ref.split()))
    return np.array(errors, dtype=float), np.array(words, dtype=float)


def per_clip(items: list[dict], recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """clip_errors summed over each clip's dithered copies: the bootstrap's unit is the clip."""
    errors, words = clip_errors(items, recs)
    names = [i["clip"] for i in items if norm(i["ref"], i["lang"])]
    keys = list(dict.fromkeys(names))
    index = np.array([keys.index(n) for n in names])
    return (np.bincount(index, errors, len(keys)), np.bincount(index, words, len(keys)))


def wer_gap_interval(ours: np.ndarray, theirs: np.ndarray, words: np.ndarray, rounds: int = 4000,
                     level: float = 0.9) -> tuple[float, float, float]:
    """WER difference in points (ours - theirs) with a paired bootstrap interval: the clips are
    resampled, each keeping both systems' errors, so that what one hard clip costs both cancels."""
    gap = 100 * (ours.sum() - theirs.sum()) / words.sum()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, words.shape[0], size=(rounds, words.shape[0]))
    gaps = 100 * (ours[idx].sum(1) - theirs[idx].sum(1)) / words[idx].sum(1)
    lo, hi = np.quantile(gaps, [(1 - level) / 2, (1 + level) / 2])
    return float(gap), float(lo), float(hi)


def median_ms(items: list[dict], recs: list[dict]) -> float:
    # only short commands: what Home Assistant sends, and what the latency claims are about
    ms = [r["ms"] for i, r in zip(items, recs) if i["short"]]
    return statistics.median(ms) if ms else float("nan")


# ------------------------------------------------------------------ report
def table(head: list[str], rows: list[list]) -> None:
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(f"{x:.1f}" if isinstance(x, float) else str(x) for x in r) + " |")


def report(items: list[dict], results: dict[str, list[dict]], modes: list[str]) -> dict:
    """Prints the tables; returns the scores (system -> mode -> group -> metrics) for --json."""
    langs = sorted({i["lang"] for i in items if i["corpus"] == "ml"})
    groups = {lg: lambda i, lg=lg: i["lang"] == lg and i["corpus"] == "ml" for lg in langs}
    if langs:
        groups["ml"] = lambda i: i["corpus"] == "ml"
    if any(i["corpus"] == "en" for i in items):
        groups["en"] = lambda i: i["corpus"] == "en"
    scores: dict = {}
    for name, recs in results.items():
        for mode in modes:
            sel = [(i, r) for i, r in zip(items, recs) if i["mode"] == mode]
            scores.setdefault(name, {})[mode] = {}
            for g, f in groups.items():
                its, rs = [i for i, _ in sel if f(i)], [r for i, r in sel if f(i)]
                if its:
                    scores[name][mode][g] = {**score(its, rs), "ms": median_ms(its, rs)}
    n = {g: sum(f(i) for i in items if i["mode"] == modes[0] and not i.get("dither")) for g, f in groups.items()}
    head = [f"{g} ({n[g]})" for g in groups]
    metrics = [("wer", "WER %"), ("cer", "CER %"), ("exact", "exact commands %")]
    for key, title in metrics + [("langid", "language ID % (auto)")]:
        for mode in modes:
            if key == "langid" and mode != "auto":
                continue  # with the language given, the "detected" language is the given one
            print(f"\n### {title}, language {mode}")
            table(["system"] + head, [[name] + [scores[name][mode].get(g, {}).get(key, "") for g in groups]
                                      for name in results])
    ref = scores.get(REFERENCE, {})
    for mode in modes:
        print(f"\n### Summary, language {mode}: pooled scores, median compute ms per clip (English: short "
              f"commands), ratio to {REFERENCE}; 'langs ok' = languages within +1 WER point of {REFERENCE}")
        rows = []
        for name in results:
            s = scores[name][mode]
            row = [name]
            for g in ("ml", "en"):
                keys = ["wer"] + (["wer_nodigit"] if g == "ml" else []) + ["cer", "exact", "langid", "ms"]
                row += [s[g][k] if g in s and (k != "langid" or mode == "auto") else "" for k in keys]
                r = ref.get(mode, {}).get(g)
                row.append(f"{s[g]['ms'] / r['ms']:.3f}" if g in s and r else "")
            ok = [lg for lg in langs if mode in ref and
                  s[lg]["wer"] <= ref[mode][lg]["wer"] + 1.0 and (mode != "auto" or s[lg]["langid"] >= ref[mode][lg]["langid"])]
            rows.append(row + [f"{len(ok)}/{len(langs)}"])
        table(["system", "ml WER", "ml WER no-digit", "ml CER", "ml exact", "ml langID", "ml ms", "ml ms ratio",
               "en WER", "en CER", "en exact", "en langID", "en ms", "en ms ratio", "langs ok"], rows)
    if REFERENCE in results and langs:
        print(f"\n### WER gap to {REFERENCE} in points, 90 % paired bootstrap interval over the clips: "
              "how many points one language's few clips can resolve; then clips with fewer / more errors than it")
        for mode in modes:
            rows = []
            for name, recs in results.items():
                if name == REFERENCE:
                    continue
                row = [f"{name} ({mode})"]
                for lg in langs + ["ml"]:
                    sel = [k for k, i in enumerate(items)
                           if i["mode"] == mode and i["corpus"] == "ml" and lg in (i["lang"], "ml")]
                    ours, words = per_clip([items[k] for k in sel], [recs[k] for k in sel])
                    theirs, _ = per_clip([items[k] for k in sel], [results[REFERENCE][k] for k in sel])
                    gap, lo, hi = wer_gap_interval(ours, theirs, words)
                    better, worse = int((ours < theirs).sum()), int((ours > theirs).sum())
                    row.append(f"{gap:+.1f} [{lo:+.1f}, {hi:+.1f}] {better}/{worse}")
                rows.append(row)
            table(["system"] + [f"{lg} ({n[lg]})" for lg in langs + ["ml"]], rows)
    if any(i.get("dither") for i in items):
        print("\n### Knife edges: clips whose reading changes between their dithered copies, per system")
        for mode in modes:
            rows = []
            for name, recs in results.items():
                readings: dict = {}
                for i, r in zip(items, recs):
                    if i["mode"] == mode:
                        readings.setdefault((i["corpus"], i["clip"]), set()).add(norm(r["text"], i["lang"]))
                rows.append([f"{name} ({mode})"] + [sum(len(v) > 1 for (c, clip), v in readings.items()
                                                        if c == corpus) for corpus in ("ml", "en")])
            table(["system", "corpus_ml clips", "corpus clips"], rows)
    if "given" in modes:
        for name, (label, wer_then, ms_then) in RESULTS_EN.items():
            s = scores.get(name, {}).get("given", {}).get("en")
            if s:
                print(f"\n{name} vs RESULTS.md issue 9 ({label}): English WER {s['wer']:.1f} % (then {wer_then} %), "
                      f"median {s['ms']:.0f} ms (then {ms_then:.0f}): ratio {s['ms'] / ms_then:.2f}")
    if "auto" in modes:
        print("\n### Wrong languages detected (auto): expected->detected x count")
        for name, recs in results.items():
            wrong = Counter(f"{i['lang']}->{r['language']}" for i, r in zip(items, recs)
                            if i["mode"] == "auto" and r["language"] != i["lang"])
            print(f"- {name}: " + (", ".join(f"{k} x{v}" for k, v in wrong.most_common()) or "none"))
    return scores


# ------------------------------------------------------------------ names table
# One home's names list (home_names.py) sent with every English short command. "names": whether the
# requests carry it (faster-whisper: as initial_prompt); "base": the names-free row its latency cost is against.
NAMES_SYSTEMS: dict[str, dict] = {
    "names-none": {"kind": "amanuensis", "settings": {}, "trim": True, "names": False, "base": "names-none"},
    "names-prompt": {"kind": "amanuensis", "trim": True, "names": True, "base": "names-none",  # wyoming-faster-whisper's way
                     "settings": {"names_prompt": True, "names_snap": 0.0, "names_boost": 0.0}},
    "names-boost": {"kind": "amanuensis", "settings": {"names_boost": 2.0, "names_snap": 0.0}, "trim": True,
                    "names": True, "base": "names-none"},
    "names-snap": {"kind": "amanuensis", "settings": {}, "trim": True, "names": True, "base": "names-none"},  # defaults
    "fw-beam5": {**SYSTEMS["fw-beam5"], "names": False, "base": "fw-beam5"},
    "fw-beam5-prompt": {**SYSTEMS["fw-beam5"], "names": True, "base": "fw-beam5"},
}


def run_names(systems: list[str], threads: int, path: Optional[Path], data: dict, corpus: str = "en") -> dict:
    """Runs the names table and prints it; returns {"names", "items", "systems", "results", "scores"},
    saved under data["names"] (corpus_ml: data["names_ml"]) to ``path`` after each configuration.
    corpus_ml: every command with its language given and its language's home (home_names_ml)."""
    if corpus == "en":
        short = [c for c in clips(CORPUS_DIR) if c.seconds <= SHORT_COMMAND_S]
        homes = {"en": home_names([c.reference for c in short])}
        items = [{"clip": c.name, "path": str(c.path), "ref": c.reference, "lang": "en", "corpus": "en", "short": True,
                  "named": bool(names_in(c.reference))} for c in short]
    else:
        items = [{"clip": c.name, "path": str(c.path), "ref": c.reference, "lang": c.name.split("_")[0], "corpus": "ml",
                  "short": True, "named": c.name in NAMES_ML} for c in clips(ML_DIR)]
        homes = {lang: home_names_ml(lang) for lang in dict.fromkeys(i["lang"] for i in items)}
    names = tuple(dict.fromkeys(n for home in homes.values() for n in home))
    specs = {s: NAMES_SYSTEMS[s] for s in systems}
    print(f"names table ({corpus}): {len(items)} short commands ({sum(i['named'] for i in items)} with a name), "
          f"{len(homes[items[0]['lang']])} names in a home, {threads} threads", flush=True)
    out = {"names": names, "items": items, "systems": specs, "results": {}, "scores": {}}
    key = "names" if corpus == "en" else "names_ml"
    for name, spec in specs.items():
        t1 = time.perf_counter()
        work = [{**i, "options": {"language": i["lang"], "names": list(homes[i["lang"]]) if spec["names"] else []}}
                for i in items]
        # each command also without the names, right after, in the same process: the names' cost
        # without what separates two processes (a few per cent either way between the rows)
        paired = spec["names"] and spec["kind"] == "amanuensis"
        if paired:
            work = [w for i in work for w in (i, {**i, "options": {**i["options"], "names": []}})]
        recs = run_system(name, spec, work, threads)
        if paired:
            recs = [{**a, "plain_ms": b["ms"]} for a, b in zip(recs[::2], recs[1::2])]
        out["results"][name] = recs
        print(f"  {name}: {time.perf_counter() - t1:.0f} s", flush=True)
        save(path, {**data, key: out})
    out["scores"] = names_report(out)
    return out


def names_report(run: dict) -> dict:
    """Exact commands with and without a name, WER, false name insertions, compute ms and its cost."""
    items, scores = run["items"], {}
    keys = {lang: [re.compile(rf"\b{re.escape(k)}\b") for k in dict.fromkeys(filter(None, (norm(n, lang)
                                                                                         for n in run["names"])))]
            for lang in {i["lang"] for i in items}}
    refs = [norm(i["ref"], i["lang"]) for i in items]
    hyps_of = {name: [norm(r["text"], i["lang"]) for i, r in zip(items, recs)] for name, recs in run["results"].items()}

    def inserted(hyps: list[str]) -> set:
        """(command, name) where the hypothesis says a home name the reference does not."""
        return {(k, key.pattern) for k, (i, r, h) in enumerate(zip(items, refs, hyps))
                for key in keys[i["lang"]] if key.search(h) and not key.search(r)}

    for name, recs in run["results"].items():
        hyps = hyps_of[name]
        base = hyps_of.get(run["systems"][name]["base"], [""] * len(items))
        ok = [(i["named"], r == h) for i, r, h in zip(items, refs, hyps)]
        ms = [r["ms"] for r in recs]
        scores[name] = {"exact_named": 100 * statistics.mean(e for n, e in ok if n),
                        "exact_other": 100 * statistics.mean(e for n, e in ok if not n),
                        "wer": 100 * jiwer.wer(refs, hyps),
                        "false_insertions": len(inserted(hyps)),
                        # ... that the names-free row did not have: put there by the biasing
                        "new_insertions": len(inserted(hyps) - inserted(base)),
                        "median_ms": statistics.median(ms), "mean_ms": statistics.mean(ms),
                        "names_ms": statistics.mean(r.get("names_ms", 0.0) for r in recs)}
    for name, s in scores.items():
        base = scores.get(run["systems"][name]["base"])
        s["cost_pct"] = 100 * (s["mean_ms"] / base["mean_ms"] - 1) if base else float("nan")
        recs = run["results"][name]
        s["paired_cost_pct"] = (100 * (statistics.mean(r["ms"] for r in recs) /
                                       statistics.mean(r["plain_ms"] for r in recs) - 1)
                                if all("plain_ms" in r for r in recs) else float("nan"))
    n = sum(i["named"] for i in items)
    corpus = "corpus_ml, language given, each language's home of" if items[0]["corpus"] == "ml" else "English,"
    print(f"\n### Names table: {len(items)} short commands ({corpus} {len(run['names'])} names "
          f"in all) with the home's names in every request (none for names-none, fw-beam5); compute ms per clip, "
          f"cost = mean ms vs the names-free row")
    table(["config", f"exact with name % ({n})", f"exact others % ({len(items) - n})", "WER %", "false insertions",
           "of them biasing's", "median ms", "mean ms", "mean names_ms", "cost %", "paired cost %"],
          [[name, s["exact_named"], s["exact_other"], s["wer"], s["false_insertions"], s["new_insertions"],
            s["median_ms"], s["mean_ms"],
            f"{s['names_ms']:.2f}", f"{s['cost_pct']:+.1f}",
            "" if s["paired_cost_pct"] != s["paired_cost_pct"] else f"{s['paired_cost_pct']:+.1f}"]
           for name, s in scores.items()])
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default=",".join(s for s in SYSTEMS if "plain" not in s and "f32" not in s),
                    help="comma-separated names from the table, or NAME:option=value;... Amanuensis variants")
    ap.add_argument("--languages", default="", help="only these language codes (en = corpus/)")
    ap.add_argument("--corpus", default="ml,en", help="ml (corpus_ml/), en (corpus/) or both")
    ap.add_argument("--modes", default="given,auto", help="language given, auto-detected, or both")
    ap.add_argument("--limit", type=int, default=0, help="first N clips of each language (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dither", type=int, default=1, metavar="N",
                    help="each clip N times: as recorded, then with one 16-bit step of noise per copy")
    ap.add_argument("--json", type=Path, help="write every transcript and score here")
    ap.add_argument("--report", type=Path, help="print the tables of an earlier --json file, run nothing")
    ap.add_argument("--names", nargs="?", const=",".join(NAMES_SYSTEMS),
                    help="run only the names table (optionally only these of its configurations)")
    ap.add_argument("--names-corpus", default="en", choices=("en", "ml"),
                    help="--names on corpus/ (English) or corpus_ml/ (each language's home, home_names_ml)")
    ap.add_argument("--no-names", action="store_true", help="leave the names table out of a run with English")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main()
    if args.report:
        saved = json.loads(args.report.read_text(encoding="utf-8"))
        if "items" in saved:
            report(saved["items"], saved["results"], list(dict.fromkeys(i["mode"] for i in saved["items"])))
        for key in ("names", "names_ml"):
            if key in saved:
                names_report(saved[key])
        return
    if args.names:
        t0 = time.perf_counter()
        key = "names" if args.names_corpus == "en" else "names_ml"
        save(args.json, {key: run_names(args.names.split(","), args.threads, args.json, {}, args.names_corpus)})
        return print(f"\n[{time.perf_counter() - t0:.0f} s]")
    specs = {}
    for s in args.systems.split(","):
        if ":" in s:  # ad hoc variant; ';' separates its options since ',' separates systems
            name, overrides = parse_variant(s.replace(";", ","))
            specs[name] = {"kind": "amanuensis", "settings": overrides, "trim": overrides.pop("vad_trim", True)}
        else:
            specs[s] = SYSTEMS[s]
    modes = args.modes.split(",")
    items = load_items(args.corpus.split(","), set(filter(None, args.languages.split(","))), args.limit, modes,
                       args.dither)
    print(f"{len(items)} items ({len(items) // len(modes) // args.dither} clips x {len(modes)} modes x "
          f"{args.dither} copies), systems: {', '.join(specs)}, "
          f"{args.threads} threads", flush=True)
    t0, results = time.perf_counter(), {}
    data = {"items": items, "systems": specs, "results": results, "scores": {}}
    for name, spec in specs.items():
        t1 = time.perf_counter()
        results[name] = run_system(name, spec, items, args.threads)
        print(f"  {name}: {time.perf_counter() - t1:.0f} s", flush=True)
        save(args.json, data)  # after each system: a long run can be read as it goes
    data["scores"] = report(items, results, modes)
    save(args.json, data)
    if not args.no_names and "en" in args.corpus.split(",") and (not args.languages or "en" in args.languages.split(",")):
        print(flush=True)
        data["names"] = run_names(list(NAMES_SYSTEMS), args.threads, args.json, data)
        save(args.json, data)
    print(f"\n[{time.perf_counter() - t0:.0f} s]")


def save(path: Optional[Path], data: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()

"""Floor step: memory and start-up of one short command, each system in its own fresh process, medians.

  ort    torch-free: the server's own imports (wyoming_amanuensis.app) + onnxruntime + tokenizers; the
         tokenizer (built beside the sessions, as loader.load_model does), the three ORT sessions and the
         prepared silence; then numpy log-mel, one short-window encode, the cross projection and greedy
         decoding. Set-up by --ort-variant (default ext-nopat+flash+pread, the product set-up).
  fw     faster-whisper: WhisperModel(<base as a CTranslate2 dir>, cpu, int8, cpu_threads=1), one
         transcribe (language en, beam 1).
  torch  our engine: the server's imports, Engine.load(base, cpu, 1 thread, its disk cache filled),
         one transcribe (language en).

From /proc/self/status: VmHWM (peak), VmRSS, RssAnon, RssFile (MiB) after the imports, once the model is
ready and after the transcript; wall time from the parent's launch of the process to each mark. One
unrecorded round first fills the torch engine's disk cache and the page cache (every start after the
first); then --rounds interleaved rounds.

--ort-variant words (after "ext": the weights are external data files, mapped by ORT; embedded weights,
the scratch prototype's "default", are not built any more): -nopat memory pattern off; +flash the
MultiHeadAttention encoder; +pread the silence's exact positions pread per request (else read whole);
-noarena ORT's CPU arena off; -nopp no weight prepacking; -encnp none in the encoder; +serialtok the
tokenizer built before the sessions.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARKS = ("imports", "tokenizer", "sessions", "ready", "transcribed", "full_window")
FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
SYSTEMS = ("ort", "fw", "torch")
CLIP = "s2p_gen_create_a_timer_for_5_minutes"
SERVER_IMPORTS = ("wyoming_amanuensis.app",)  # what the server imports before any model (no torch)


def status() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in FIELDS:
            out[k] = round(int(v.split()[0]) / 1024, 1)
    return out


def ort_child(spec: dict, mark) -> str:
    import threading

    import numpy as np
    for name in SERVER_IMPORTS + ("onnxruntime", "tokenizers"):
        importlib.import_module(name)
    from wyoming_amanuensis.model.loader import locate
    from wyoming_amanuensis.model.tokenizer import WhisperTokenizer

    from .runtime import greedy, load_pipeline, log_mel_np, read_audio, suppress_masks, window_frames
    assert "torch" not in sys.modules
    mark("imports")
    variant, graphs = spec["variant"], Path(spec["graphs"])
    if not variant.startswith("ext"):
        raise SystemExit(f"{variant}: only external-data graphs are built")
    _, directory, _ = locate("base")
    config = json.loads((directory / "config.json").read_text())
    holder = []

    def build_tokenizer():  # ~0.2 s holding the GIL, while session creation mostly releases it
        holder.append(WhisperTokenizer.from_files(directory / "tokenizer.json", config.get("lang_ids") or [], 51865))
    thread = threading.Thread(target=build_tokenizer)
    if "+serialtok" in variant:
        build_tokenizer()
        mark("tokenizer")
    else:
        thread.start()
    ow = load_pipeline(graphs, flash="+flash" in variant, pattern="-nopat" not in variant,
                       arena="-noarena" not in variant, prepack="-nopp" not in variant,
                       enc_prepack="-encnp" not in variant, pread="+pread" in variant)
    mark("sessions")
    if thread.is_alive():
        thread.join()
    tok = holder[0]
    filters = np.load(graphs / "mel_filters.npy")
    mark("ready")
    audio = read_audio(spec["clip"])
    kv, bias = ow.cross_kv(ow.encode(log_mel_np(audio, window_frames(len(audio)), filters)[None]))
    tokens = greedy(ow, kv, bias, tok.sot_sequence("en"), tok.eot, suppress_masks(tok.eot, config, 51865))
    text = tok.decode(tokens).strip()
    mark("transcribed")
    if spec["full_window"]:  # then one full 30 s window (long audio, or the language in doubt)
        ow.encode(log_mel_np(audio, 3000, filters)[None])
        mark("full_window")
    return text


def fw_child(spec: dict, mark) -> str:
    import faster_whisper
    mark("imports")
    model = faster_whisper.WhisperModel(spec["fw_dir"], device="cpu", compute_type="int8", cpu_threads=1)
    mark("ready")
    from .runtime import read_audio
    segments, _ = model.transcribe(read_audio(spec["clip"]), beam_size=1, language="en")
    text = " ".join(s.text for s in segments).strip()
    mark("transcribed")
    return text


def torch_child(spec: dict, mark) -> str:
    importlib.import_module(*SERVER_IMPORTS)
    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.pipeline import Engine
    from wyoming_amanuensis.request import Request
    mark("imports")  # torch itself is imported inside Engine.load, as in the server
    engine = Engine.load(settings_from(model="base", encoder_backend="cpu", threads=1, cache_dir=spec["cache"]))
    mark("ready")
    from .runtime import read_audio
    text = engine.transcribe(read_audio(spec["clip"]), 16000, Request(language="en")).text
    mark("transcribed")
    return text


def child(system: str, spec: dict) -> None:
    marks = {}

    def mark(name):
        marks[name] = {"t": time.time(), **status()}
    text = {"ort": ort_child, "fw": fw_child, "torch": torch_child}[system](spec, mark)
    print(json.dumps({"marks": marks, "text": text}))


def once(system: str, spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", __name__, system, json.dumps(spec)], capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{system} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    row = {"text": res["text"]}
    for k, m in res["marks"].items():
        row[f"{k}_s"] = round(m["t"] - t0, 3)
        row.update({f"{k}_{f}": m[f] for f in FIELDS})
    return row


def run(work: Path, graphs: Path, rounds: int, variant: str, full_window: bool) -> dict:
    from benchmarks.bench_engine import materialise_model
    from benchmarks.corpus import CORPUS_DIR
    fw_dir = work / "whisper-base-ct2"
    if not (fw_dir / "model.bin").is_file():
        materialise_model("base", fw_dir)
    spec = {"graphs": str(graphs), "variant": variant, "full_window": full_window, "fw_dir": str(fw_dir),
            "cache": str(work / "cache"), "clip": str(CORPUS_DIR / f"{CLIP}.wav")}
    for s in SYSTEMS:  # warm-up, not recorded
        once(s, spec)
    runs = {s: [] for s in SYSTEMS}
    for r in range(rounds):
        for s in SYSTEMS:  # interleaved rounds
            runs[s].append(once(s, spec))
            row = runs[s][-1]
            print(f"  round {r + 1} {s}: ready {row['ready_s']:.2f} s, transcribed {row['transcribed_s']:.2f} s, "
                  f"peak {row['transcribed_VmHWM']:.0f} MiB: {row['text']!r}", flush=True)
    median = {s: {k: statistics.median(row[k] for row in rows) for k in rows[0] if k != "text"} | {"text": rows[0]["text"]}
              for s, rows in runs.items()}
    return {"variant": variant, "rounds": rounds, "clip": CLIP, "median": median, "runs": runs}


def table(r: dict) -> str:
    m = r["median"]
    fw = m["fw"]
    names = {"ort": f"ORT ({r['variant']})", "fw": "faster-whisper int8", "torch": "amanuensis (torch)"}
    lines = [f"{r['clip']}, 1 thread, {r['rounds']} fresh processes per system, medians; (x) = ratio to faster-whisper",
             "", "| system | launch -> ready (s) | launch -> first transcript (s) | peak RSS (MiB) | RSS after (MiB) "
             "| anon / file after (MiB) | transcript |", "|---|---|---|---|---|---|---|"]
    for s, row in m.items():
        def cell(k, fmt):
            return f"{row[k]:{fmt}} ({row[k] / fw[k]:.2f})"
        lines.append(f"| {names[s]} | {cell('ready_s', '.2f')} | {cell('transcribed_s', '.2f')} | "
                     f"{cell('transcribed_VmHWM', '.0f')} | {cell('transcribed_VmRSS', '.0f')} | "
                     f"{row['transcribed_RssAnon']:.0f} / {row['transcribed_RssFile']:.0f} | {row['text']} |")
    if "full_window_VmHWM" in m["ort"]:
        lines.append(f"\nORT after one more full 30 s window: peak {m['ort']['full_window_VmHWM']:.0f} MiB, "
                     f"at {m['ort']['full_window_s']:.2f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    child(sys.argv[1], json.loads(sys.argv[2]))

"""Transcripts step: our torch engine against the ORT prototype on every clip of corpus/ (English, greedy) and
corpus_ml/ (11 languages, the language given, beam 5), as the server decodes them by default.

  torch  Engine.transcribe(samples, 16000, Request(language=...)): base, cpu, 1 thread
  ort    the product set-up (runtime.load_pipeline): numpy log-mel, flash encoder, cross projection, and
         decode.py's numpy port of decoding.py's search driving the ORT decoder step
Same audio to both (runtime.read_audio: 16 kHz mono float32, no VAD trim). Per clip: the same token ids or
not, the same text (ORT's silence rule applied as the engine applies it), the faster of REPS timings each.

Then, for every clip whose tokens differ and every 7th agreeing corpus_ml clip, where the difference comes
from, each search run by decode.py:
  port     our torch decoder step (TorchStep) on torch's own encoder output: must give the engine's tokens
           exactly (checks the numpy port itself, not ORT)
  decoder  torch's encoder output -> ORT cross projection + ORT decoder step (the decoder graph alone)
  encoder  numpy mel + ORT flash encoder -> torch cross projection + torch decoder step (the encoder alone)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.corpus import CORPUS_DIR, clips

from . import decode
from .numerics import engine as load_engine
from .runtime import SETTINGS, load_pipeline, log_mel_np, read_audio, suppress_masks, window_frames

REPS = 2  # timings per clip and system (the faster counts)
SETS = {"corpus": CORPUS_DIR, "corpus_ml": CORPUS_DIR.parent / "corpus_ml"}


class TorchStep:
    """decode.py's stepper over our torch decoder (TextDecoder + Decoder._logits): the past comes in as numpy
    [B, H, T, hd] per layer, is copied into a fresh SelfCache, and goes out with the new position."""

    def __init__(self, decoder):
        import torch
        self.torch, self.decoder, self.net = torch, decoder, decoder.net
        self.L, _, _, self.H, _, self.hd = self.net.new_cache(1).kv.shape

    def empty_past(self, batch: int):
        z = np.zeros((batch, self.H, 0, self.hd), np.float32)
        return [(z, z) for _ in range(self.L)]

    def step(self, tokens, offset, past, cross, bias=None):  # cross: CrossAttention.kv (its own bias)
        torch = self.torch
        B = tokens.shape[0]
        with torch.inference_mode():
            cache = self.net.new_cache(B)
            for i, (k, v) in enumerate(past):
                cache.kv[i, 0, :, :, :offset] = torch.from_numpy(np.ascontiguousarray(k))
                cache.kv[i, 1, :, :, :offset] = torch.from_numpy(np.ascontiguousarray(v))
            cache.length = offset
            kv = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), b) for k, v, b in cross]
            h, _ = self.net(torch.tensor(tokens, dtype=torch.long), cache, kv)
            n = offset + tokens.shape[1]
            return (self.decoder._logits(h[:, -1]),
                    [(cache.kv[i, 0, :, :, :n].numpy().copy(), cache.kv[i, 1, :, :, :n].numpy().copy())
                     for i in range(self.L)])


def items() -> list[tuple[str, object, str]]:
    """(set, clip, language) for every clip; corpus_ml names are <language>_<nnn> (pt_PT: Whisper's pt)."""
    out = []
    for name, directory in SETS.items():
        found = clips(directory)
        if not found:
            raise SystemExit(f"no clips in {directory} (set AMANUENSIS_CORPUS)")
        out += [(name, c, "en" if name == "corpus" else c.name.split("_")[0]) for c in found]
    return out


def beam_for(language: str) -> int:  # Engine's choice with the server's defaults (greedy English, beam 5 else)
    return SETTINGS.beam_size if language == "en" else SETTINGS.beam_size_non_english


def run(work: Path, graphs: Path) -> dict:
    import onnxruntime
    import torch

    from wyoming_amanuensis.mel import log_mel
    from wyoming_amanuensis.request import Request
    eng = load_engine(work)
    loaded = eng.models["base"]
    model, tok, decoder, backend, context = (loaded.model, loaded.model.tokenizer, loaded.decoder, loaded.backend,
                                             loaded.context)
    ow = load_pipeline(graphs)
    filters = np.load(graphs / "mel_filters.npy")
    masks = suppress_masks(tok.eot, {"suppress_ids": model.suppress_ids, "suppress_ids_begin": model.suppress_ids_begin},
                           model.dims.n_vocab)
    assert np.array_equal(masks[0], decoder.suppress_begin) and np.array_equal(masks[1], decoder.suppress)

    def ort_transcribe(audio, lang):
        if audio.size == 0 or float(np.abs(audio).max()) < 1e-4:
            return None  # as the engine, which does not decode digital silence
        kv, bias = ow.cross_kv(ow.encode(log_mel_np(audio, window_frames(audio.shape[0]), filters)[None]))
        return decode.decode(ow, kv, bias, tok, lang, masks, audio.shape[0] / 16000, beam_for(lang))

    work_items = items()
    a0 = read_audio(work_items[0][1].path)  # warm-up, both
    eng.transcribe(a0, 16000, Request(language=work_items[0][2]))
    ort_transcribe(a0, work_items[0][2])
    rows = []
    for s, clip, lang in work_items:
        audio = read_audio(clip.path)
        te, to = [], []
        for _ in range(REPS):
            t0 = time.perf_counter()
            res = eng.transcribe(audio, 16000, Request(language=lang))
            te.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            od = ort_transcribe(audio, lang)
            to.append((time.perf_counter() - t0) * 1000)
        o_tokens = od.tokens if od is not None else []
        o_text = tok.decode(o_tokens).strip()
        row = {"set": s, "clip": clip.name, "lang": lang, "seconds": round(audio.shape[0] / 16000, 2),
               "same_tokens": list(res.token_ids) == list(o_tokens), "torch_text": res.text,
               "ort_text": "" if od is None or od.is_silence else o_text, "ort_raw_text": o_text,
               "torch_tokens": list(res.token_ids), "ort_tokens": list(o_tokens),
               "ort_no_speech": od.no_speech_prob if od else None, "ort_avg_logprob": od.avg_logprob if od else None,
               "torch_ms": round(min(te), 2), "ort_ms": round(min(to), 2)}
        row["same_text"] = row["torch_text"] == row["ort_text"]
        rows.append(row)
        print(f"  {s} {clip.name}: {'same' if row['same_tokens'] else 'DIFFERENT'} (torch {min(te):.0f} ms, "
              f"ort {min(to):.0f} ms) {res.text!r}" + ("" if row["same_tokens"] else f" | ort {o_text!r}"), flush=True)

    summary = {}
    for s in SETS:
        r = [x for x in rows if x["set"] == s]
        summary[s] = {"clips": len(r), "same_tokens": sum(x["same_tokens"] for x in r),
                      "same_text": sum(x["same_text"] for x in r),
                      "torch_ms_median": round(statistics.median(x["torch_ms"] for x in r), 1),
                      "ort_ms_median": round(statistics.median(x["ort_ms"] for x in r), 1),
                      "ort_over_torch_median": round(statistics.median(x["ort_ms"] / x["torch_ms"] for x in r), 3)}
    per_language = {lang: f"{sum(x['same_tokens'] for x in rows if x['lang'] == lang and x['set'] == 'corpus_ml')}/"
                          f"{sum(1 for x in rows if x['lang'] == lang and x['set'] == 'corpus_ml')}"
                    for lang in sorted({x["lang"] for x in rows if x["set"] == "corpus_ml"})}

    # where the differences come from
    steps = TorchStep(decoder)
    agreeing = [x for x in rows if x["same_tokens"] and x["set"] == "corpus_ml"][::7]
    paths = {(s, c.name): c.path for s, c, _ in work_items}
    diag = []
    for r in [x for x in rows if not x["same_tokens"]] + agreeing:
        audio = read_audio(paths[r["set"], r["clip"]])
        frames, seconds, beam = window_frames(audio.shape[0]), audio.shape[0] / 16000, beam_for(r["lang"])
        with torch.inference_mode():
            enc = backend.encode(log_mel(audio, 80, n_frames=frames)[None], context)
            enc.tail_cached = True  # the window is short: the decoder appends its silence tail
            cross = decoder.prepare(enc)
        port = decode.decode(steps, cross.kv, None, tok, r["lang"], masks, seconds, beam).tokens
        okv, obias = ow.cross_kv(enc.features.numpy())
        dec_only = decode.decode(ow, okv, obias, tok, r["lang"], masks, seconds, beam).tokens
        with torch.inference_mode():
            enc.features = torch.from_numpy(ow.encode(log_mel_np(audio, frames, filters)[None]))
            cross2 = decoder.prepare(enc)
        enc_only = decode.decode(steps, cross2.kv, None, tok, r["lang"], masks, seconds, beam).tokens
        t = r["torch_tokens"]
        diag.append({"set": r["set"], "clip": r["clip"], "same_tokens": r["same_tokens"], "port_same": port == t,
                     "ort_decoder_only_same": dec_only == t, "ort_encoder_only_same": enc_only == t,
                     "ort_decoder_only_text": tok.decode(dec_only).strip(),
                     "ort_encoder_only_text": tok.decode(enc_only).strip()})
    diag_summary = {f"{k} ({group} clips)": f"{sum(d[k] for d in diag if d['same_tokens'] == same)}/"
                                            f"{sum(1 for d in diag if d['same_tokens'] == same)}"
                    for k in ("port_same", "ort_decoder_only_same", "ort_encoder_only_same")
                    for group, same in (("differing", False), ("agreeing", True))}
    return {"summary": summary, "per_language": per_language, "diag_summary": diag_summary,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "reps": REPS,
            "rows": rows, "diag": diag}


def table(r: dict) -> str:
    yes = {True: "same", False: "differs"}
    lines = [f"onnxruntime {r['onnxruntime']} vs torch {r['torch']}, 1 thread; times: whole transcript, the faster "
             f"of {r['reps']}, medians over clips (ms)", "",
             "| set | clips | same tokens | same text | torch ms | ORT ms | ORT / torch (median of ratios) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {s} | {v['clips']} | {v['same_tokens']} | {v['same_text']} | {v['torch_ms_median']} | "
              f"{v['ort_ms_median']} | {v['ort_over_torch_median']} |" for s, v in r["summary"].items()]
    lines += ["", "corpus_ml, same tokens per language: "
              + ", ".join(f"{lang} {v}" for lang, v in r["per_language"].items()), "",
              "Where they come from (each search by decode.py; torch = the engine's tokens):", "",
              "| check | differing clips | agreeing clips |", "|---|---|---|"]
    for k, what in (("port_same", "numpy search on our torch decoder step = torch"),
                    ("ort_decoder_only_same", "torch encoder + ORT decoder = torch"),
                    ("ort_encoder_only_same", "ORT encoder + torch decoder = torch")):
        lines.append(f"| {what} | {r['diag_summary'][f'{k} (differing clips)']} | "
                     f"{r['diag_summary'][f'{k} (agreeing clips)']} |")
    lines += ["", "| clip | torch | ORT | ORT decoder alone | ORT encoder alone |", "|---|---|---|---|---|"]
    rows = {x["clip"]: x for x in r["rows"]}
    for d in (d for d in r["diag"] if not d["same_tokens"]):
        x = rows[d["clip"]]
        lines.append(f"| {d['clip']} | {x['torch_text']} | {x['ort_raw_text']} | {yes[d['ort_decoder_only_same']]} | "
                     f"{yes[d['ort_encoder_only_same']]} |")
    return "\n".join(lines)

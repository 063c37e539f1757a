"""Shapes step: the prototype's graphs for every CTranslate2 Whisper shape, against our torch modules.

The graphs were written for the bundled base; the product loads any shape (tiny .. large-v3, 80 or 128 mel
bins, 2-32 decoder layers, three vocabularies). For each shape of tests/fake_ct2_whisper.py (random weights,
written into WORK/shapes/NAME/model, stored float16 as write_model's default) this builds the graphs as the
build step does (WORK/shapes/NAME/graphs: encoder, flash encoder, int8 cross projection and decoder step,
the prepared silence; plus float32 twins of the cross projection and decoder step) and compares them with
our engine for that model (Engine.load, cpu encoder, 1 thread, its cache in WORK/shapes/cache):

  encoder   a real corpus clip's log-mel (the shape's mel bins), short window (with the engine's silence
            context) and full window, plain and flash graphs: cosine, max |difference|
  silence   the graphs' own prepared silence context against the engine's: min cosine
  decoder   a fixed token sequence (the sot sequence, then " turn on the lights in the office") teacher-forced
            through both decoders on the engine's encoder output, each step's logits: cosine, max |difference|,
            argmax agreement under the engine's suppression masks. Twice: int8 (decoder.onnx against the
            engine's RowInt8Linear decoder) and float32 (the float twins against load_model's float decoder)

Random weights make near ties common (and the int8 path rounds each activation row to 256 steps, so a tiny
float difference can move a logit by a quantisation step): the agreement is reported, not asserted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .graphs import build, build_cross, build_decoder, dims, load_variables, ort_dims, save
from . import numerics
from .numerics import CLIPS, corpus_audio, cos, maxdiff
from .runtime import SETTINGS, OrtWhisper, load_pipeline, log_mel_np, session, window_frames

TEXT = " turn on the lights in the office"


def float_twins(graphs: Path, model: str) -> tuple[Path, Path, float]:
    """GRAPHS/variants/cross_f32.onnx and decoder_f32.onnx (built unless there) and the seconds it took."""
    directory = graphs / "variants"
    t0 = time.perf_counter()
    if not (directory / "decoder_f32.onnx").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        v = load_variables(model)
        save(build_cross(v, int8=False), directory, "cross_f32")
        save(build_decoder(v, int8=False), directory, "decoder_f32")
    return directory / "cross_f32.onnx", directory / "decoder_f32.onnx", time.perf_counter() - t0


def teacher_forced(decoder, ow: OrtWhisper, feats, seq: list[int], n_prefix: int) -> dict:
    """seq's steps (the prefix at once, then one token each) through the engine's decoder and the ORT step,
    both on the engine's encoder features (short window: with each side's silence tail)."""
    from wyoming_amanuensis.encoders.base import EncoderOutput
    cross = decoder.prepare(EncoderOutput(features=feats, tail_cached=True, backend="cpu"))
    okv, obias = ow.cross_kv(feats.numpy())
    feed = [seq[:n_prefix]] + [[t] for t in seq[n_prefix:]]
    t_logits, o_logits, agree = numerics.teacher_forced(decoder, cross, ow, okv, obias, feed)
    return {"steps": len(feed), "argmax_agree": agree,
            "min_cos": min(cos(a, b) for a, b in zip(t_logits, o_logits)),
            "max_abs_diff": max(maxdiff(a, b) for a, b in zip(t_logits, o_logits)),
            "max_abs": float(max(np.abs(a).max() for a in t_logits)),
            "cross_kv_min_cos": min(min(cos(k, tk), cos(v, tv)) for (k, v), (tk, tv, _) in zip(okv, cross.kv))}


def one_shape(work: Path, shape, audio: np.ndarray) -> dict:
    import torch

    from tests.fake_ct2_whisper import Vocab, write_model
    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.decoding import Decoder
    from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel
    from wyoming_amanuensis.model.loader import load_model
    from wyoming_amanuensis.model.quantize import int8_activation_bits
    from wyoming_amanuensis.pipeline import Engine

    root = work / "shapes" / shape.name
    model = root / shape.name  # the engine names a model by its directory
    if not (model / "model.bin").is_file():
        write_model(model, shape)
    graphs = root / "graphs"
    fresh = not (graphs / "built.json").is_file()
    t0 = time.perf_counter()
    build(work, str(model), graphs)
    build_s = time.perf_counter() - t0
    if not fresh:  # reused: the seconds the build recorded
        build_s = json.loads((graphs / "built.json").read_text())["seconds"]
    cross_f32, decoder_f32, twins_s = float_twins(graphs, str(model))
    D = dims(load_variables(str(model)))

    # a float decoder in the engine: the scaled-down widths (heads x 4) are not all multiples of 16, which
    # RowInt8Linear needs (every real width is); the int8 decoder is made below where it can be
    engine = Engine.load(settings_from(model=str(model), encoder_backend="cpu", threads=1, int8_decoder=False,
                                       cache_dir=str(work / "shapes" / "cache")))
    loaded = engine.models[shape.name]
    backend, context, tok = loaded.backend, loaded.context, loaded.model.tokenizer
    n_mels = loaded.model.dims.n_mels
    out = {"shape": shape.name, "real": shape.real, "n_mels": n_mels, "L_enc": D["L_enc"], "L_dec": D["L_dec"],
           "d": D["d"], "heads": D["H_enc"], "head_dim": D["d"] // D["H_enc"], "n_vocab": D["n_vocab"],
           "vocab": shape.vocab, "eot": tok.eot, "build_s": round(build_s, 1), "float_twins_s": round(twins_s, 1)}
    assert (n_mels, D["n_vocab"], tok.eot) == (shape.n_mels, Vocab(shape.vocab).n_vocab, Vocab(shape.vocab).eot)

    product = load_pipeline(graphs, pread=False)  # the product set-up over this shape's graphs
    out["silence_context_kv_min_cos"] = min(min(cos(t.k, L.k.numpy()), cos(t.v, L.v.numpy()))
                                            for t, L in zip(product.enc_tails, context.layers))
    # isolated, as the compare step: the engine's silence context and tails fed to the graphs
    torch_context = [(L.k.numpy(), L.v.numpy()) for L in context.layers]
    plain = OrtWhisper(session(graphs / "encoder.onnx"), None, None, **ort_dims(D))
    flash = OrtWhisper(product.enc, None, None, **ort_dims(D))
    for ow in (plain, flash):
        ow.set_silence(torch_context, [])
    filters = np.load(graphs / "mel_filters.npy")
    out["encoder"] = {}
    for label, frames in (("short", window_frames(len(audio))), ("full", N_FRAMES_30S)):
        mel = log_mel(audio, n_mels, n_frames=frames)[None]
        out[f"mel_numpy_vs_torch_maxdiff_{label}"] = maxdiff(log_mel_np(audio, frames, filters), mel[0])
        with torch.inference_mode():
            t = backend.encode(mel, context).features.numpy()
        for which, ow in (("plain", plain), ("flash", flash)):
            o = ow.encode(mel.numpy())
            out["encoder"][f"{label}_{which}"] = {"frames": frames, "cos": cos(o, t), "max_abs_diff": maxdiff(o, t),
                                                  "max_abs": float(np.abs(t).max())}

    # the decoder, on the engine's short-window encoder output
    mel = log_mel(audio, n_mels, n_frames=window_frames(len(audio)))[None]
    silent = log_mel(np.zeros(0, np.float32), n_mels, n_frames=N_FRAMES_30S)[None]
    with torch.inference_mode():
        feats = backend.encode(mel, context).features
        silence = backend.encode(silent, None).features
    prefix = tok.sot_sequence("en" if tok.multilingual else None)
    seq = prefix + tok.encode(TEXT)
    bits = int8_activation_bits(SETTINGS.int8_decoder_bits)  # as the engine's int8 decoder (8, or 7 without VNNI)
    try:
        int8 = Decoder(load_model(str(model)), silence, int8_bits=bits, tail_chunk=SETTINGS.decoder_tail_chunk)
    except ValueError as e:  # RowInt8Linear refuses this width
        out["decoder_int8"] = {"refused": str(e)}
    else:
        ow8 = OrtWhisper(None, product.cross, product.dec, **ort_dims(D))
        ow8.set_silence([], [(t.k.numpy(), t.v.numpy()) for t in int8.silence_tails])
        out["decoder_int8"] = dict(teacher_forced(int8, ow8, feats, seq, len(prefix)), torch_int8_bits=bits)
    f32 = loaded.decoder  # the engine's, float
    owf = OrtWhisper(None, session(cross_f32), session(decoder_f32), **ort_dims(D))
    owf.set_silence([], [(t.k.numpy(), t.v.numpy()) for t in f32.silence_tails])
    out["decoder_f32"] = teacher_forced(f32, owf, feats, seq, len(prefix))
    engine.close()
    return out


def run(work: Path, graphs: Path | None = None) -> dict:
    """Every shape of tests/fake_ct2_whisper.SHAPES (``graphs``, base's build, is not used)."""
    import torch

    from tests.fake_ct2_whisper import SHAPES
    torch.set_num_threads(1)
    audio = corpus_audio(CLIPS[:1])[CLIPS[0]]
    rows = []
    for shape in SHAPES.values():
        t0 = time.perf_counter()
        rows.append(one_shape(work, shape, audio))
        r = rows[-1]
        print(f"  {shape.name}: encoder flash cos {r['encoder']['short_flash']['cos']:.9f} / "
              f"{r['encoder']['full_flash']['cos']:.9f}, decoder int8 {agreement(r['decoder_int8'])}, "
              f"f32 {agreement(r['decoder_f32'])} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"clip": CLIPS[0], "text": TEXT, "shapes": rows}


def agreement(d: dict) -> str:
    return "n/a (torch refuses int8)" if "refused" in d else f"{d['argmax_agree']}/{d['steps']}"


def gap(c: float) -> str:
    """1 - cosine (every cosine here prints as 1.000000000 to nine places)."""
    return f"{1.0 - c:.1e}"


def decoder_cell(d: dict) -> str:
    if "refused" in d:
        return "n/a (width not a multiple of 16)"
    return f"{gap(d['min_cos'])} / {d['max_abs_diff']:.2g} / {agreement(d)}"


def table(r: dict) -> str:
    head = ("| shape | mels | layers enc+dec | width (heads x hd) | vocab | encoder 1-cos short / full (flash) "
            "| encoder 1-cos short / full (plain) | encoder max diff (flash, full) | silence ctx 1-min cos "
            "| decoder int8: 1-min cos / max diff / argmax | decoder f32: 1-min cos / max diff / argmax | build s |\n|"
            + "---|" * 12)
    rows = []
    for s in r["shapes"]:
        e = s["encoder"]
        rows.append(
            f"| {s['shape']} | {s['n_mels']} | {s['L_enc']}+{s['L_dec']} | {s['d']} ({s['heads']} x {s['head_dim']}) "
            f"| {s['n_vocab']} | {gap(e['short_flash']['cos'])} / {gap(e['full_flash']['cos'])} "
            f"| {gap(e['short_plain']['cos'])} / {gap(e['full_plain']['cos'])} "
            f"| {e['full_flash']['max_abs_diff']:.2g} (of {e['full_flash']['max_abs']:.1f}) "
            f"| {gap(s['silence_context_kv_min_cos'])} | {decoder_cell(s['decoder_int8'])} "
            f"| {decoder_cell(s['decoder_f32'])} | {s['build_s']:.1f} (+{s['float_twins_s']:.1f}) |")
    return head + "\n" + "\n".join(rows) + (
        f"\n\nclip {r['clip']}; decoder teacher-forced over the sot sequence + {r['text']!r} on the engine's "
        "short-window encoder output (min over the steps; max diff: logits); build s: encoder, flash encoder, "
        "int8 cross + decoder, prepared silence (+ the float32 twins)")

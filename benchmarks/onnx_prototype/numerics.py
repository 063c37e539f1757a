"""Compare step: the ONNX graphs against our torch engine (Engine.load: base, cpu, 1 thread).

  int8 weights     our numpy quantisation against the torch modules' (must be identical)
  MatMulInteger    exact on the worst case 255 * 127 * 512 (as quantize.int8_activation_bits probes torch)
  silence          the build step's silence context / decoder tail (ORT graphs) against the engine's: cosine
  mel              numpy log-mel against torch's: max |difference|
  encoder          a short window and a full one, plain and flash graphs, on torch's mel and silence context
  decoder          12 English corpus commands: torch's greedy tokens teacher-forced through both decoders
                   (on torch's encoder output), argmax agreement step by step; then the whole ORT pipeline
                   (numpy mel, flash encoder, prepared silence, greedy loop) against torch's tokens
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.corpus import CORPUS_DIR, clips

from .runtime import OrtWhisper, greedy, load_pipeline, log_mel_np, read_audio, session, window_frames

CLIPS = ["s2p_gen_create_a_timer_for_5_minutes", "living_room_light", "lamp_44k_stereo",
         "s2p_gen_close_the_windows_in_the_office", "s2p_gen_set_bed_light_brightness_to_75_percent",
         "s2p_gen_what_s_the_weather_in_new_york", "s2p_rec_add_apples_to_my_shopping_list",
         "s2p_rec_set_a_timer_for_30_seconds", "s2p_rec_what_is_the_outdoor_humidity",
         "s2p_rec_turn_off_all_of_the_lights_in_the_office", "s2p_gen_turn_the_standing_light_in_the_office_off",
         "s2p_rec_what_s_the_weather_like_in_new_york"]


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def maxdiff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def engine(work: Path):
    """Our engine as the server loads it (base, cpu, 1 thread), its prepared files cached under WORK/cache."""
    import torch

    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.pipeline import Engine
    torch.set_num_threads(1)
    return Engine.load(settings_from(model="base", encoder_backend="cpu", threads=1, cache_dir=str(work / "cache")))


def torch_engine(work: Path):
    """The engine's loaded base model (backend, decoder, silence context, tokenizer)."""
    return engine(work).models["base"]


def corpus_audio(names: list[str]) -> dict[str, np.ndarray]:
    by_name = {c.name: c for c in clips()}
    if missing := [n for n in names if n not in by_name]:
        raise SystemExit(f"corpus clips {missing} not in {CORPUS_DIR} (set AMANUENSIS_CORPUS)")
    return {n: read_audio(by_name[n].path) for n in names}


def teacher_forced(decoder, cross, ow: OrtWhisper, okv, obias, feed: list[list[int]]):
    """``feed``'s steps through the torch decoder (on ``cross``) and the ORT step (on okv, obias): each step's
    logits on both sides, and at how many steps their argmax agrees under the decoder's suppression masks."""
    import torch
    t_logits, o_logits = [], []
    with torch.inference_mode():
        cache = decoder.net.new_cache(1)
        for step in feed:
            h, _ = decoder.net(torch.tensor([step]), cache, cross.kv)
            t_logits.append(decoder._logits(h[:, -1])[0])
    past, offset = ow.empty_past(1), 0
    for step in feed:
        lg, past = ow.step(np.array([step]), offset, past, okv, obias)
        o_logits.append(lg[0])
        offset += len(step)
    first, later = decoder.suppress_begin, decoder.suppress
    agree = sum(int(np.argmax(a + m) == np.argmax(b + m))
                for s, (a, b) in enumerate(zip(t_logits, o_logits)) for m in [first if s == 0 else later])
    return t_logits, o_logits, agree


def int8_checks(decoder) -> dict:
    from onnx import TensorProto, helper

    from .graphs import load_variables, quantize_rows
    v = load_variables()
    mism = total = 0
    pairs = [(v["decoder/embeddings/weight"], decoder.net.proj)]
    for i, blk in enumerate(decoder.net.blocks):
        pairs += [(v[f"decoder/layer_{i}/{name}/weight"], mod) for mod, name in (
            (blk.self_qkv, "self_attention/linear_0"), (blk.mlp.fc2, "ffn/linear_1"), (blk.cross_kv, "attention/linear_1"))]
    for w, mod in pairs:
        q = quantize_rows(w.astype(np.float32))[0]
        mism += int((q != mod.parts()["weight"].numpy()).sum())
        total += q.size
    probe = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, ["r", 512]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [512, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["r", 32])])
    probe = session(helper.make_model(probe, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    exact = all(bool((probe.run(None, {"a": np.full((r, 512), 255, np.uint8), "b": np.full((512, 32), 127, np.int8)})[0]
                      == 255 * 127 * 512).all()) for r in (1, 33))
    return {"int8_weight_mismatches": f"{mism} of {total}", "matmulinteger_exact": exact}


def run(work: Path, graphs: Path) -> dict:
    import torch

    from wyoming_amanuensis.decoding import DecodeOptions
    from wyoming_amanuensis.mel import log_mel
    loaded = torch_engine(work)
    backend, decoder, context, tok = loaded.backend, loaded.decoder, loaded.context, loaded.model.tokenizer
    filters = np.load(graphs / "mel_filters.npy")
    out = int8_checks(decoder)

    product = load_pipeline(graphs, pread=False)  # the product set-up, its prepared silence read whole
    out["silence_context_kv_min_cos"] = min(min(cos(t.k, L.k.numpy()), cos(t.v, L.v.numpy()))
                                            for t, L in zip(product.enc_tails, context.layers))
    out["silence_tail_kv_min_cos"] = min(min(cos(t.k, s.k.numpy()), cos(t.v, s.v.numpy()))
                                         for t, s in zip(product.dec_tails, decoder.silence_tails))

    # Isolated: ORT graphs fed torch's silence context and tail, so that each piece is compared alone
    plain = OrtWhisper(session(graphs / "encoder.onnx"), product.cross, product.dec)
    plain.set_silence([(L.k.numpy(), L.v.numpy()) for L in context.layers],
                      [(t.k.numpy(), t.v.numpy()) for t in decoder.silence_tails])
    flash = OrtWhisper(product.enc, None, None)
    flash.enc_tails = plain.enc_tails
    audio = corpus_audio(CLIPS)
    first_mask, later_mask = decoder.suppress_begin, decoder.suppress
    out["encoder"] = {}
    for label, frames in (("short", window_frames(len(audio[CLIPS[0]]))), ("full", 3000)):
        mel = log_mel(audio[CLIPS[0]], 80, n_frames=frames)[None]
        out[f"mel_numpy_vs_torch_maxdiff_{label}"] = maxdiff(log_mel_np(audio[CLIPS[0]], frames, filters), mel[0])
        with torch.inference_mode():
            t = backend.encode(mel, context).features.numpy()
        for which, ow in (("plain", plain), ("flash", flash)):
            o = ow.encode(mel.numpy())
            out["encoder"][f"{label}_{which}"] = {
                "frames": frames, "cos": cos(o, t), "min_row_cos": min(cos(o[0, j], t[0, j]) for j in range(o.shape[1])),
                "max_abs_diff": maxdiff(o, t), "max_abs": float(np.abs(t).max())}

    per_clip = []
    for name in CLIPS:
        mel = log_mel(audio[name], 80, n_frames=window_frames(len(audio[name])))[None]
        with torch.inference_mode():
            enc = backend.encode(mel, context)
            enc.tail_cached = True  # the window is short: the decoder appends its silence tail
            cross = decoder.prepare(enc)
            res = decoder.decode(cross, DecodeOptions(language="en"))
        okv, obias = plain.cross_kv(enc.features.numpy())
        # teacher forcing: torch's tokens through both decoders, the logits of every step
        feed = [res.prefix] + [[t] for t in res.tokens]
        t_logits, o_logits, agree = teacher_forced(decoder, cross, plain, okv, obias, feed)
        # the whole product path on ORT, from the samples
        fkv, fbias = product.cross_kv(product.encode(log_mel_np(audio[name], mel.shape[2], filters)[None]))
        o_tokens = greedy(product, fkv, fbias, res.prefix, tok.eot, (first_mask, later_mask), len(res.tokens) + 10)
        per_clip.append({"clip": name, "steps": len(feed), "argmax_agree": agree,
                         "max_logit_diff": max(maxdiff(a, b) for a, b in zip(t_logits, o_logits)),
                         "cross_kv_min_cos": min(min(cos(k, tk), cos(v, tv)) for (k, v), (tk, tv, _) in zip(okv, cross.kv)),
                         "torch_text": tok.decode(res.tokens).strip(), "ort_text": tok.decode(o_tokens).strip(),
                         "ort_same_tokens": o_tokens == res.tokens})
        print(f"  {name}: {agree}/{len(feed)} steps agree, end to end "
              f"{'same' if o_tokens == res.tokens else 'DIFFERENT'}: {per_clip[-1]['ort_text']!r}", flush=True)
    out["decoder"] = {"clips": len(CLIPS), "steps": sum(c["steps"] for c in per_clip),
                      "argmax_agree": sum(c["argmax_agree"] for c in per_clip),
                      "max_logit_diff": max(c["max_logit_diff"] for c in per_clip),
                      "end_to_end_same_tokens": sum(c["ort_same_tokens"] for c in per_clip), "per_clip": per_clip}
    return out


def table(r: dict) -> str:
    d = r["decoder"]
    rows = [("decoder, teacher-forced: argmax agreement", f"{d['argmax_agree']}/{d['steps']} steps"),
            ("decoder, teacher-forced: max logit difference", f"{d['max_logit_diff']:.3f}"),
            ("end to end (ORT pipeline): same tokens as torch", f"{d['end_to_end_same_tokens']}/{d['clips']} clips"),
            ("cross K/V (window part): min cosine", f"{min(c['cross_kv_min_cos'] for c in d['per_clip']):.9f}")]
    rows += [(f"encoder {k} ({e['frames']} frames): cosine / min row cosine / max abs diff",
              f"{e['cos']:.12f} / {e['min_row_cos']:.9f} / {e['max_abs_diff']:.2g} (of {e['max_abs']:.1f})")
             for k, e in r["encoder"].items()]
    rows += [("prepared silence context K/V: min cosine", f"{r['silence_context_kv_min_cos']:.9f}"),
             ("prepared silence decoder tail K/V: min cosine", f"{r['silence_tail_kv_min_cos']:.9f}"),
             ("numpy mel vs torch: max abs diff (short / full)",
              f"{r['mel_numpy_vs_torch_maxdiff_short']:.2g} / {r['mel_numpy_vs_torch_maxdiff_full']:.2g}"),
             ("int8 weights differing from the torch modules'", r["int8_weight_mismatches"]),
             ("MatMulInteger exact at 255 * 127 * 512", str(r["matmulinteger_exact"]))]
    return "| check | result |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)

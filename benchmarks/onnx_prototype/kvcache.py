"""KV-cache step: the decoder step with a preallocated self-attention cache written in place, against the
prototype's Concat step and torch's, at 1 thread, interleaved call by call, medians (ms).

  torch       our TextDecoder step (SelfCache preallocated, attention over its filled part), as timing.py
  ort concat  the prototype's decoder.onnx (OrtWhisper.step): past in, past + new out, a Concat copy that
              grows with the past
  ort gqa     graphs.build_decoder(self_attn="gqa"): com.microsoft.GroupQueryAttention over a cache
              [B, H, 448, hd] per layer, bound as past_k{i} AND present_k{i} (one OrtValue over a numpy buffer,
              IOBinding), so ORT writes the new position in place; logits into a bound buffer too

at 10/100/200 past tokens, batch 1 and 5 (timing.step_cases), and at batch 5 the beam's reorder of the cache
rows (a non-identity permutation) for each layout. Then the GQA step's numerics against the Concat step,
teacher-forced from an empty cache (the prefix, then 60 random tokens): not bit-identical, a different
attention kernel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .graphs import build_variant
from .numerics import corpus_audio, torch_engine
from .runtime import load_pipeline, session, window_frames
from .timing import CLIP, SOT, bench, step_cases

MAX_T = 448  # the decoder's context: the preallocated cache's length


class GqaStep:
    """The in-place step: per layer a [B, H, MAX_T, hd] key and value buffer, bound as input and output."""

    def __init__(self, sess, batch: int, cross, bias, n_layers=6, n_heads=8, head_dim=64, n_vocab=51865):
        import onnxruntime as ort
        self.sess, self.B = sess, batch
        self.kbuf = [np.zeros((batch, n_heads, MAX_T, head_dim), np.float32) for _ in range(n_layers)]
        self.vbuf = [np.zeros((batch, n_heads, MAX_T, head_dim), np.float32) for _ in range(n_layers)]
        self.logits = np.zeros((batch, n_vocab), np.float32)
        self.io = sess.io_binding()
        self.values = []  # the OrtValues over the buffers, kept alive with the binding
        for i, (kb, vb) in enumerate(zip(self.kbuf, self.vbuf)):
            for kind, buf in (("k", kb), ("v", vb)):
                value = ort.OrtValue.ortvalue_from_numpy(buf)  # over the numpy buffer, no copy
                self.values.append(value)
                self.io.bind_ortvalue_input(f"past_{kind}{i}", value)
                self.io.bind_ortvalue_output(f"present_{kind}{i}", value)
            self.io.bind_cpu_input(f"cross_k{i}", cross[i][0])
            self.io.bind_cpu_input(f"cross_v{i}", cross[i][1])
        self.io.bind_cpu_input("cross_bias", bias)
        self.values.append(ort.OrtValue.ortvalue_from_numpy(self.logits))
        self.io.bind_ortvalue_output("logits", self.values[-1])

    def fill(self, past):
        """Copy a per-layer (k, v) [B, H, T, hd] past into the buffers."""
        for i, (k, v) in enumerate(past):
            self.kbuf[i][:, :, :k.shape[2]] = k
            self.vbuf[i][:, :, :v.shape[2]] = v

    def step(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        n = tokens.shape[1]
        self.io.bind_cpu_input("tokens", np.ascontiguousarray(tokens, np.int64))
        self.io.bind_cpu_input("offset", np.array([offset], np.int64))
        self.io.bind_cpu_input("seqlens_k", np.full(self.B, offset + n - 1, np.int32))
        self.io.bind_cpu_input("total_len", np.array([offset + n], np.int32))
        self.sess.run_with_iobinding(self.io)
        return self.logits

    def reorder(self, origins: np.ndarray, length: int):
        for bufs in (self.kbuf, self.vbuf):
            for b in bufs:
                b[:, :, :length] = b[origins, :, :length]


def numerics(ow, gqa_sess, okv, obias, rng) -> dict:
    toks = [int(t) for t in rng.integers(300, 20000, 60)]
    g = GqaStep(gqa_sess, 1, okv, obias)
    lg_c, past = ow.step(np.array([SOT]), 0, ow.empty_past(1), okv, obias)
    lg_g = g.step(np.array([SOT]), 0).copy()
    diffs, agree, off = [float(np.abs(lg_c - lg_g).max())], int(lg_c.argmax() == lg_g.argmax()), len(SOT)
    for t in toks:
        lg_c, past = ow.step(np.array([[t]]), off, past, okv, obias)
        lg_g = g.step(np.array([[t]]), off).copy()
        diffs.append(float(np.abs(lg_c - lg_g).max()))
        agree += int(lg_c.argmax() == lg_g.argmax())
        off += 1
    cache_diff = max(float(np.abs(g.kbuf[i][0, :, :off] - past[i][0][0]).max()) for i in range(len(past)))
    return {"steps": len(diffs), "argmax_agree": agree, "max_logit_diff": max(diffs),
            "bitwise_equal_steps": sum(d == 0.0 for d in diffs), "cache_max_diff": cache_diff}


def run(work: Path, graphs: Path) -> dict:
    import onnxruntime
    import torch

    from wyoming_amanuensis.mel import log_mel
    loaded = torch_engine(work)
    ow = load_pipeline(graphs)
    gqa_sess = session(build_variant(graphs, "plain", "gqa"), pattern=False)
    audio = corpus_audio([CLIP])[CLIP]
    with torch.inference_mode():
        enc = loaded.backend.encode(log_mel(audio, 80, n_frames=window_frames(len(audio)))[None], loaded.context)
    enc.tail_cached = True
    okv, obias = ow.cross_kv(enc.features.numpy())
    rng = np.random.default_rng(1)
    out = {"clip": CLIP, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
           "gqa_vs_concat": numerics(ow, gqa_sess, okv, obias, rng)}
    print(f"  {out['gqa_vs_concat']}", flush=True)
    for c in step_cases(loaded, ow, enc, rng):
        g = GqaStep(gqa_sess, c.batch, c.cross, c.bias)
        g.fill(c.past)
        fns = {"torch": c.torch_step, "ort concat": c.ort_step,
               "ort gqa": lambda g=g, c=c: g.step(c.new, c.past_len)}
        if c.batch > 1:
            perm = np.roll(np.arange(c.batch), 1)
            tperm = torch.from_numpy(perm)

            def t_reorder(c=c, tperm=tperm):
                with torch.inference_mode():
                    c.cache.length = c.past_len
                    c.cache.reorder(tperm)
            fns.update({"reorder torch": t_reorder,
                        "reorder concat (numpy gather)": lambda c=c, perm=perm: [(k[perm], v[perm]) for k, v in c.past],
                        "reorder gqa (in place)": lambda g=g, c=c, perm=perm: g.reorder(perm, c.past_len)})
        key = f"batch {c.batch}, {c.past_len} past"
        out[key] = bench(fns, 30, 3)
        assert np.abs(g.kbuf[0][:, :, c.past_len]).sum() > 0  # the in-place cache got the step's keys
        print(f"  {key}: {out[key]}", flush=True)
    return out


def table(r: dict) -> str:
    n = r["gqa_vs_concat"]
    lines = [f"onnxruntime {r['onnxruntime']} vs torch {r['torch']}, 1 thread, clip {r['clip']}, one decoder step, "
             "medians (ms)", "", "| case | torch | ORT concat | ORT gqa (in place) | gqa / concat | gqa / torch |",
             "|---|---|---|---|---|---|"]
    cases = {k: v for k, v in r.items() if k.startswith("batch ")}
    lines += [f"| {k} | {v['torch']:.2f} | {v['ort concat']:.2f} | {v['ort gqa']:.2f} | "
              f"{v['ort gqa'] / v['ort concat']:.2f} | {v['ort gqa'] / v['torch']:.2f} |" for k, v in cases.items()]
    lines += ["", "Beam reorder of the cache rows (batch 5, a non-identity permutation), medians (ms)", "",
              "| case | torch (SelfCache.reorder) | concat (numpy gather) | gqa (in place) |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['reorder torch']:.2f} | {v['reorder concat (numpy gather)']:.2f} | "
              f"{v['reorder gqa (in place)']:.2f} |" for k, v in cases.items() if "reorder torch" in v]
    lines += ["", f"GQA step vs Concat step, teacher-forced from an empty cache: argmax agrees on {n['argmax_agree']}/"
              f"{n['steps']} steps, bitwise equal {n['bitwise_equal_steps']}, max logit difference "
              f"{n['max_logit_diff']:.3g}, cache max difference {n['cache_max_diff']:.3g}"]
    return "\n".join(lines)

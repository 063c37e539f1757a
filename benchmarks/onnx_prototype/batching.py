"""Batch step: batched decoding of requests with different audio lengths on ORT: is each row's output
bit-identical to the row decoded alone (as our torch engine guarantees: a request's tokens must not
depend on what it is batched with)?

Decoder-step variants (graphs.build_decoder, built into WORK/graphs/variants), same weights and int8 linears:
  pad      rows' cross K/V padded to the batch's longest S with a -inf bias; pad1500: the same graph with every
           row padded to 1500 positions, alone too (one shape for every request)
  loop     rows' cross K/V concatenated, an ONNX Loop attends each row over its own slice
  plain    the prototype's decoder.onnx alone (B = 1): the reference of today's numbers

clips    four corpus clips of different lengths (cross lengths S differ) encoded by the product set-up; each
         row's own greedy tokens (decoder.onnx) fed teacher-forced to each variant alone and the four rows
         batched (a finished row steps on end-of-text, as decoding._greedy does); the logits of every step
         a row is active compared bitwise, at 1 and 2 intra-op threads; plus the cost of a batched step
stress   BATCHES random batches of 2..4 rows, cross lengths drawn in 1..1500 (the first row's in 1..39),
         cross K/V drawn from jfk's real ones (positions permuted, repeated or cut to the length), 4 random
         tokens per row after the prefix: pad and loop batched vs alone, bitwise, 1 and 2 threads (seed SEED)
pad      which lengths break the pad variant: a row of length S batched with one of 1500 against the row alone
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from wyoming_amanuensis.decoding import max_tokens_for

from .graphs import build_variant
from .numerics import corpus_audio
from .runtime import greedy, load_pipeline, log_mel_np, session, suppress_masks, window_frames
from .timing import SOT

CLIPS = ["s2p_rec_next", "s2p_gen_create_a_timer_for_5_minutes",
         "s2p_gen_turn_the_standing_light_in_the_office_off", "jfk"]
EOT = 50257  # end of text: a finished row's dummy token
BATCHES, SEED = 40, 7
PAD_LENGTHS = list(range(1, 40)) + [100, 255, 256, 257, 300, 511, 512, 513, 700, 1000, 1023, 1024, 1025, 1499]
PAD_SEED = 3


def cross_feeds(mode: str, rows, pad_to=None) -> dict:
    """rows: per row (per-layer (k, v) [1, H, S, hd], bias [S]) -> the variant's cross inputs."""
    f = {}
    L = len(rows[0][0])
    if mode == "plain":
        (kv, f["cross_bias"]), = rows
        for i in range(L):
            f[f"cross_k{i}"], f[f"cross_v{i}"] = kv[i]
    elif mode == "pad":
        S = pad_to or max(b.shape[0] for _, b in rows)
        f["cross_bias"] = np.full((len(rows), S), -np.inf, np.float32)
        for r, (_, b) in enumerate(rows):
            f["cross_bias"][r, :b.shape[0]] = b
        for i in range(L):
            for j, kind in enumerate("kv"):
                t = np.zeros((len(rows), *rows[0][0][i][j].shape[1:2], S, rows[0][0][i][j].shape[3]), np.float32)
                for r, (kv, b) in enumerate(rows):
                    t[r, :, :b.shape[0]] = kv[i][j][0]
                f[f"cross_{kind}{i}"] = t
    else:  # loop
        f["cross_bias"] = np.concatenate([b for _, b in rows])
        f["cross_off"] = np.cumsum([0] + [b.shape[0] for _, b in rows]).astype(np.int64)
        for i in range(L):
            for j, kind in enumerate("kv"):
                f[f"cross_{kind}{i}"] = np.ascontiguousarray(np.concatenate([kv[i][j] for kv, _ in rows], axis=2))
    return f


def teacher_forced(sess, mode: str, rows, seqs, pad_to=None):
    """The prefix, then each row's tokens (end-of-text once a row has none left): per step the logits [B, V]
    and the step's time (s)."""
    B, L = len(rows), len(rows[0][0])
    _, H, _, hd = rows[0][0][0][0].shape
    cf = cross_feeds(mode, rows, pad_to)
    past = [(np.zeros((B, H, 0, hd), np.float32),) * 2 for _ in range(L)]
    feed = [np.array([SOT] * B)] + [np.array([[s[t] if t < len(s) else EOT] for s in seqs])
                                    for t in range(max(len(s) for s in seqs))]
    out, times, offset = [], [], 0
    for tok in feed:
        f = dict(cf, tokens=tok, offset=np.array([offset], np.int64))
        for i in range(L):
            f[f"past_k{i}"], f[f"past_v{i}"] = past[i]
        t0 = time.perf_counter()
        o = sess.run(None, f)
        times.append(time.perf_counter() - t0)
        out.append(o[0])
        past = [(o[1 + 2 * i], o[2 + 2 * i]) for i in range(L)]
        offset += tok.shape[1]
    return out, times


def same(a, b) -> dict:
    """a, b: per row a list of per-step logits [V]: rows all bitwise equal, (row, step) pairs equal, max |diff|."""
    eq = tot = rows_eq = 0
    md = 0.0
    for x_row, y_row in zip(a, b):
        ok = True
        for x, y in zip(x_row, y_row):
            e = bool(np.array_equal(x, y))
            eq, tot, ok = eq + e, tot + 1, ok and e
            md = max(md, float(np.max(np.abs(x.astype(np.float64) - y))))
        rows_eq += ok
    return {"rows_identical": f"{rows_eq}/{len(a)}", "steps_identical": f"{eq}/{tot}", "max_abs_diff": md}


def clip_checks(graphs: Path, variants: dict, rows, seqs) -> tuple[dict, dict]:
    n = len(rows)
    steps = [len(s) + 1 for s in seqs]  # the prefix step and one per token (the end-of-text step included)
    logits, times = {}, {}
    for threads in (1, 2):
        sess = {name: session(path, threads=threads, pattern=False) for name, path in variants.items()}
        sess["plain"] = session(graphs / "decoder.onnx", threads=threads, pattern=False)
        for _ in range(2):  # the first round warms up; the second's times count
            for name, mode, pad_to in (("plain", "plain", None), ("pad", "pad", None), ("pad1500", "pad", 1500),
                                       ("loop", "loop", None)):
                solo = [teacher_forced(sess[mode], mode, [rows[r]], [seqs[r]], pad_to) for r in range(n)]
                logits[threads, name, "solo"] = [[lg[0] for lg in s[0]] for s in solo]
                times[threads, name, "solo"] = [t for s in solo for t in s[1]]
                if name != "plain":
                    b_logits, times[threads, name, "batch"] = teacher_forced(sess[mode], mode, rows, seqs, pad_to)
                    logits[threads, name, "batch"] = [[lg[r] for lg in b_logits[:steps[r]]] for r in range(n)]
        print(f"  clips: {threads} thread(s) done", flush=True)
    cmp = {}
    for threads in (1, 2):
        for name in ("pad", "pad1500", "loop"):
            cmp[f"{name} batch {n} vs {name} alone, {threads} thr"] = same(logits[threads, name, "batch"],
                                                                          logits[threads, name, "solo"])
        for name in ("pad", "pad1500", "loop"):
            cmp[f"{name} alone vs decoder.onnx alone, {threads} thr"] = same(logits[threads, name, "solo"],
                                                                            logits[threads, "plain", "solo"])
    for name in ("plain", "pad", "loop"):
        cmp[f"{name} alone, 1 thr vs 2 thr"] = same(logits[1, name, "solo"], logits[2, name, "solo"])
    for name in ("pad", "loop"):
        cmp[f"{name} batch, 1 thr vs 2 thr"] = same(logits[1, name, "batch"], logits[2, name, "batch"])
    cost = {}
    for threads in (1, 2):
        for name in ("plain", "pad", "pad1500", "loop"):
            solo = statistics.median(times[threads, name, "solo"])
            c = {"solo_step_ms": round(1000 * solo, 2)}
            if name != "plain":  # a batched step after the prefix against the n solo steps it replaces
                b = statistics.median(times[threads, name, "batch"][1:])
                c.update({"batch_step_ms": round(1000 * b, 2), "batch_over_solo_steps": round(b / (n * solo), 3)})
            cost[f"{name}, {threads} thr"] = c
    return cmp, cost


def random_rows(rng, kv0, b0):
    """A row of S positions drawn from a real request's cross K/V (positions permuted and repeated or cut)."""
    def row(S):
        idx = rng.permutation(np.resize(np.arange(b0.shape[0]), S))
        return [(np.ascontiguousarray(k[:, :, idx]), np.ascontiguousarray(v[:, :, idx])) for k, v in kv0], b0[idx].copy()
    return row


def stress(variants: dict, kv0, b0) -> dict:
    res = {}
    for threads in (1, 2):
        sess = {m: session(variants[m], threads=threads, pattern=False) for m in ("pad", "loop")}
        stats = {m: [0, 0, 0.0] for m in sess}
        rng = np.random.default_rng(SEED)
        row = random_rows(rng, kv0, b0)
        for _ in range(BATCHES):
            B = int(rng.integers(2, 5))
            lengths = [int(x) for x in rng.integers(1, 1501, B)]
            lengths[0] = int(rng.integers(1, 40))  # a very short one too
            rows = [row(S) for S in lengths]
            seqs = [[int(t) for t in rng.integers(300, 20000, 4)] for _ in range(B)]
            for m, s in sess.items():
                batch, _ = teacher_forced(s, m, rows, seqs)
                for r in range(B):
                    solo, _ = teacher_forced(s, m, [rows[r]], [seqs[r]])
                    for x, y in zip(batch, solo):
                        stats[m][0] += int(np.array_equal(x[r], y[0]))
                        stats[m][1] += 1
                        stats[m][2] = max(stats[m][2], float(np.abs(x[r] - y[0]).max()))
        res[f"{threads} thr"] = {m: {"steps_identical": f"{e}/{t}", "max_abs_diff": d} for m, (e, t, d) in stats.items()}
        print(f"  stress: {threads} thread(s) {res[f'{threads} thr']}", flush=True)
    return res


def pad_lengths(variants: dict, kv0, b0) -> dict:
    sess = session(variants["pad"], pattern=False)
    row = random_rows(np.random.default_rng(PAD_SEED), kv0, b0)
    good, bad = [], []
    for S in PAD_LENGTHS:
        r, big = row(S), row(1500)
        b, _ = teacher_forced(sess, "pad", [r, big], [[1000, 2000]] * 2)
        o, _ = teacher_forced(sess, "pad", [r], [[1000, 2000]])
        (good if all(np.array_equal(x[0], y[0]) for x, y in zip(b, o)) else bad).append(S)
    return {"identical": good, "differ": bad, "differ_mod_4": sorted({S % 4 for S in bad}),
            "identical_3_mod_4": [S for S in good if S % 4 == 3]}


def run(work: Path, graphs: Path) -> dict:
    import onnxruntime

    from wyoming_amanuensis.model.loader import locate
    variants = {m: build_variant(graphs, m, "concat") for m in ("pad", "loop")}
    ow = load_pipeline(graphs)
    filters = np.load(graphs / "mel_filters.npy")
    config = json.loads((locate("base")[1] / "config.json").read_text())
    masks = suppress_masks(EOT, config, 51865)
    rows, seqs = [], []
    for name, audio in corpus_audio(CLIPS).items():
        kv, bias = ow.cross_kv(ow.encode(log_mel_np(audio, window_frames(audio.shape[0]), filters)[None]))
        rows.append((kv, bias))
        seqs.append(greedy(ow, kv, bias, SOT, EOT, masks, max_tokens_for(audio.shape[0] / 16000)))
        print(f"  {name}: S = {bias.shape[0]}, {len(seqs[-1])} tokens", flush=True)
    out = {"onnxruntime": onnxruntime.__version__, "clips": CLIPS, "cross_lengths": [b.shape[0] for _, b in rows],
           "tokens": [len(s) for s in seqs]}
    out["bitwise"], out["cost"] = clip_checks(graphs, variants, rows, seqs)
    kv0, b0 = rows[CLIPS.index("jfk")]
    out["stress"] = {"batches": BATCHES, "seed": SEED, **stress(variants, kv0, b0)}
    out["pad_lengths"] = pad_lengths(variants, kv0, b0)
    return out


def table(r: dict) -> str:
    lines = [f"onnxruntime {r['onnxruntime']}; clips {', '.join(r['clips'])}: cross lengths "
             f"{', '.join(map(str, r['cross_lengths']))}, {', '.join(map(str, r['tokens']))} tokens; logits of every "
             "(row, step) compared bitwise", "",
             "| comparison | rows identical | steps identical | max abs diff |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['rows_identical']} | {v['steps_identical']} | {v['max_abs_diff']:.3g} |"
              for k, v in r["bitwise"].items()]
    s = r["stress"]
    lines += ["", f"Random lengths: {s['batches']} batches of 2..4 rows (seed {s['seed']}), 4 steps each after the "
              "prefix, batched vs alone", "", "| threads | pad: steps identical | pad: max abs diff | "
              "loop: steps identical | loop: max abs diff |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['pad']['steps_identical']} | {v['pad']['max_abs_diff']:.3g} | {v['loop']['steps_identical']} "
              f"| {v['loop']['max_abs_diff']:.3g} |" for k, v in s.items() if k.endswith("thr")]
    p = r["pad_lengths"]
    lines += ["", f"pad, a row of S positions beside one of 1500 vs alone, {len(p['identical']) + len(p['differ'])} "
              f"lengths: differs for S = {p['differ']} (S mod 4 in {p['differ_mod_4']}); identical for the others, "
              f"of those 3 mod 4: {p['identical_3_mod_4']}", "",
              "Cost, medians (ms): one step alone, one batched step after the prefix, and the batched step over the "
              "solo steps it replaces", "", "| variant | alone | batched | batched / solo steps |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['solo_step_ms']} | {v.get('batch_step_ms', '')} | {v.get('batch_over_solo_steps', '')} |"
              for k, v in r["cost"].items()]
    return "\n".join(lines)

"""numpy port of wyoming_amanuensis.decoding's search, greedy (Decoder._greedy at batch 1) and beam
(Decoder._beam with beam_like_ctranslate2), driving a decoder step such as runtime.OrtWhisper.step.

Written to mirror decoding.py rule by rule, in its order and with its names, so that it can seed the
product's torch-free decoder later (a measurement here: the transcripts step checks it gives exactly the
engine's tokens when driven by our torch decoder step). Ported: the suppression masks (suppress_begin on
the first step, suppress after; runtime.suppress_masks builds them as Decoder.__init__ does), the prefix
with the language given in one pass (_run_prefix), no_speech_prob (softmax at the start-of-transcript
position), max_tokens_for and the context limit, the loop rule (loop_start), log_softmax scores, the beam's
CTranslate2 rules (2 * beam candidates, only the beam best may finish, finished readings ranked by score
over text tokens, stop once beam readings have finished) and avg_logprob.
Not ported (no request here uses them): prompts, name boosts, timestamps, language detection, alignment,
stop callbacks, batches of requests (decode_batch), beam_like_ctranslate2 off.

It takes decoding.py's own constants, loop_start, max_tokens_for and DecodeResult (so it imports torch
today); a product port would move those into a torch-free module beside it.

A stepper has empty_past(batch) and step(tokens [B, n], offset, past, cross, bias) -> (logits [B, V],
past) with past a per-layer list of (k, v) [B, H, T, hd] arrays (numpy indexing reorders the beam's rows).
"""

from __future__ import annotations

import numpy as np

from wyoming_amanuensis.decoding import DecodeResult, loop_start, max_tokens_for

N_TEXT_CTX = 448  # model.dims.n_text_ctx of every Whisper model


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    s = x - m
    return (s - np.log(np.exp(s).sum(axis=-1, keepdims=True))).astype(np.float32)


def run_prefix(stepper, cross, bias, prefix: list[int], no_speech_id: int):
    """Decoder._run_prefix with the language given: (logits after the prefix [1, V], past, no_speech_prob).
    The engine reads no_speech at the sot position of the one prefix pass; a step graph returns only the
    last position's logits, so here a separate 1-token pass gives it (causal: the same position)."""
    sot_logits, _ = stepper.step(np.array([prefix[:1]]), 0, stepper.empty_past(1), cross, bias)
    x = sot_logits[0].astype(np.float64)
    p = np.exp(x - x.max())
    no_speech = float((p / p.sum())[no_speech_id])
    logits, past = stepper.step(np.array([prefix]), 0, stepper.empty_past(1), cross, bias)
    return logits, past, no_speech


def greedy(stepper, cross, bias, prefix, eot, no_speech_id, masks, max_tokens) -> DecodeResult:
    """Decoder._greedy for one request."""
    logits, past, no_speech = run_prefix(stepper, cross, bias, prefix, no_speech_id)
    suppress, later = masks
    limit = min(max_tokens, N_TEXT_CTX - len(prefix) - 1)
    tokens, looped, logprob_sum, offset, active = [], False, 0.0, len(prefix), limit > 0
    while active:
        logp = log_softmax(logits + suppress)
        suppress = later
        nxt = int(np.argmax(logp[0]))
        logprob_sum += float(logp[0, nxt])
        if nxt == eot:
            break
        tokens.append(nxt)
        cut = loop_start(tokens)
        if cut is not None:
            del tokens[cut:]
            looped = True
            break
        if len(tokens) >= limit:
            break
        logits, past = stepper.step(np.array([[nxt]]), offset, past, cross, bias)
        offset += 1
    return DecodeResult(tokens=tokens, language=None, avg_logprob=logprob_sum / (len(tokens) + 1),
                        no_speech_prob=no_speech, prefix=prefix, looped=looped)


def topk(total: np.ndarray, k: int) -> np.ndarray:
    """torch.topk's indices: the k largest, descending (ties: the lower index first)."""
    idx = np.argpartition(-total, k - 1)[:k]
    return idx[np.lexsort((idx, -total[idx]))]


def beam(stepper, cross, bias, prefix, eot, no_speech_id, masks, max_tokens, beam_size=5) -> DecodeResult:
    """Decoder._beam with beam_like_ctranslate2 (the server's default)."""
    logits, past, no_speech = run_prefix(stepper, cross, bias, prefix, no_speech_id)
    limit = min(max_tokens, N_TEXT_CTX - len(prefix) - 1)
    seqs: list[list[int]] = [[]]
    scores = np.zeros(1, np.float32)  # what ranks the beams (no name bonuses here: the model's own)
    model_scores = np.zeros(1, np.float32)
    finished: list[tuple[float, list[int], float]] = []  # (normalised score, tokens, sum logprob)
    suppress, later = masks
    offset = len(prefix)
    for step in range(limit):
        logp = log_softmax(logits + suppress)
        suppress = later
        total = (scores[:, None] + logp).ravel()  # float32 as torch
        model_total = (model_scores[:, None] + logp).ravel()
        new_seqs, new_scores, new_model, origins = [], [], [], []
        for rank, flat in enumerate(topk(total, min(2 * beam_size, total.size)).tolist()):
            score = float(total[flat])
            src, token = divmod(flat, logp.shape[1])
            own = float(model_total[flat])
            if token == eot or step == limit - 1:
                seq = seqs[src] + ([] if token == eot else [token])
                if rank < beam_size:
                    finished.append((score / max(len(seq), 1), seq, own))
            else:
                new_seqs.append(seqs[src] + [token])
                new_scores.append(score)
                new_model.append(own)
                origins.append(src)
            if len(new_seqs) == beam_size:
                break
        if len(finished) >= beam_size or not new_seqs:
            break
        seqs = new_seqs
        scores = np.array(new_scores, np.float32)
        model_scores = np.array(new_model, np.float32)
        o = np.array(origins)  # cache.reorder: the prefix row is shared at first, then each beam its own row
        past = [(k[o], v[o]) for k, v in past]
        logits, past = stepper.step(np.array([[s[-1]] for s in seqs]), offset, past, cross, bias)
        offset += 1
    if not finished:
        finished = [(s / max(len(q), 1), q, m) for s, q, m in zip(scores.tolist(), seqs, model_scores.tolist())]
    best = max(finished, key=lambda f: f[0])
    return DecodeResult(tokens=best[1], language=None, avg_logprob=best[2] / (len(best[1]) + 1),
                        no_speech_prob=no_speech, prefix=prefix)


def decode(stepper, cross, bias, tok, language: str, masks, seconds: float, beam_size: int) -> DecodeResult:
    """One request with the language given, as Decoder.decode with DecodeOptions(language, max_tokens):
    greedy at beam_size 1, else the beam."""
    args = (stepper, cross, bias, tok.sot_sequence(language), tok.eot, tok.no_speech, masks, max_tokens_for(seconds))
    result = greedy(*args) if beam_size <= 1 else beam(*args, beam_size=beam_size)
    result.language = language
    return result

"""Decoder stage: the search that turns encoder states into tokens.

``Decoder`` is the search; the network that runs the weights is a
``decoder_net.DecoderNet`` (``net``): ONNX Runtime sessions on the CPU
(``onnx_runtime``), torch modules on CUDA and beside the NPU
(``model/torch_net.py``). What crosses between them is token ids one way and
float32 numpy logits the other; the search's arithmetic (``scoring.py``)
follows torch's float32 kernels, so that it decides as the torch engine did.
One per model lives for the whole process and is shared by all requests (it
holds no per-request state). Per request it validates the encoder output, has
the network project the cross-attention keys/values once (joined with the
process-wide keys/values of the cached silence tail), then decodes greedily or
with a beam, with a self-attention cache, language detection, token
suppression and a token cap tied to the audio length.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import scoring
from .biasing import NameBoost
from .decoder_net import CrossAttention, DecoderNet, SelfCache
from .encoders.base import EncoderOutput
from .model.loader import WhisperModel
from .model.whisper_spec import N_CTX_AUDIO
from .timestamps import TimestampRules

_LOG = logging.getLogger(__name__)

# Token budget: generous for fast speech (~5 tokens/s is typical), small enough
# that a decoder stuck in a loop stops long before the 448-token context.
TOKENS_PER_SECOND_CAP = 10.0
TOKENS_FLOOR = 12
MAX_NEW_TOKENS = 220

# openai-whisper's thresholds for declaring a segment silent
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
# Above this the model is sure enough that there is no speech whatever the text's
# log-probability: its one-word hallucination on faint noise ("you", avg logprob
# -0.89) comes with 0.91-0.95, while no real command in corpus/ and corpus_ml/
# (287 decodes, base, English and detected languages) goes above 0.66.
NO_SPEECH_CERTAIN = 0.8


# A run of the same 1..16-token pattern this many times over is a decoding
# loop (Whisper's failure mode on noise), not speech: stop and keep one copy.
LOOP_REPEATS = 4
LOOP_MAX_PERIOD = 16


def loop_start(tokens: list[int]) -> Optional[int]:
    """Index where a trailing loop's repeats begin (after its first copy), or None."""
    n = len(tokens)
    for period in range(1, LOOP_MAX_PERIOD + 1):
        span = period * LOOP_REPEATS
        if span > n:
            break
        tail = tokens[n - period:]
        if all(tokens[n - k * period:n - (k - 1) * period] == tail for k in range(2, LOOP_REPEATS + 1)):
            return n - span + period
    return None


class DecoderInputError(ValueError):
    """The decoder was handed something that is not this model's encoder output."""


def max_tokens_for(audio_seconds: float) -> int:
    return int(min(MAX_NEW_TOKENS, TOKENS_FLOOR + math.ceil(TOKENS_PER_SECOND_CAP * max(audio_seconds, 0.0))))


@dataclass
class DecodeOptions:
    language: Optional[str] = None  # None: detect (multilingual models)
    beam_size: int = 1
    # Width for a language other than English, when it differs (decided once the language is
    # known, detected or given); None = beam_size for every language.
    beam_size_other: Optional[int] = None
    prompt_tokens: list[int] = field(default_factory=list)
    max_tokens: int = MAX_NEW_TOKENS
    record_alignment: bool = False  # keep cross-attention of the alignment heads (greedy only)
    boost: Optional[NameBoost] = None  # bonuses toward the home's names (biasing.py)
    # Asked before each token: True = nobody wants this result any more (a withdrawn
    # speculation, a client that left); the search stops and its tokens are meaningless.
    stop: Optional[Callable[[], bool]] = None
    # Decode with timestamp tokens (long audio's windows, windows.py); such a request is decoded alone.
    timestamps: bool = False


@dataclass
class DecodeResult:
    tokens: list[int]
    language: Optional[str]
    avg_logprob: float
    no_speech_prob: float
    prefix: list[int]
    # [heads, rows, S] cross-attention of the alignment heads, rows = predictor positions
    alignment_weights: Optional[np.ndarray] = None
    looped: bool = False  # decoding was stopped in a repetition loop (repeats trimmed)
    # Greedy only: the search's cache and this result's row in it, which holds the keys/values
    # of prefix + tokens, so that comparing readings (``compare``) does not feed them again.
    self_cache: Optional[tuple[SelfCache, int]] = None

    @property
    def is_silence(self) -> bool:
        """openai-whisper's rule, plus: a loop over audio the model thinks is silent is silence,
        and so is anything the model is all but certain holds no speech."""
        if self.no_speech_prob > NO_SPEECH_CERTAIN:
            return True
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and (self.avg_logprob < LOGPROB_THRESHOLD or self.looped)


class Decoder:
    def __init__(self, model: WhisperModel, net: DecoderNet, *, beam_like_ctranslate2: bool = True):
        self.model = model
        self.tok = model.tokenizer
        self.width = model.dims.width
        self.net = net
        self.beam_like_ctranslate2 = beam_like_ctranslate2
        # the suppression masks [vocab], float32 numpy: added to the logits on the search's side
        n_vocab = model.dims.n_vocab
        mask = np.zeros(n_vocab, dtype=np.float32)
        # everything after end-of-text is a special token (sot, languages, tasks, timestamps)
        mask[self.tok.eot + 1:] = -math.inf
        for i in model.suppress_ids:
            if 0 <= i < n_vocab:
                mask[i] = -math.inf
        self.suppress = mask
        begin = np.zeros(n_vocab, dtype=np.float32)
        for i in model.suppress_ids_begin:
            if 0 <= i < n_vocab:
                begin[i] = -math.inf
        self.suppress_begin = mask + begin
        # with timestamps on, the timestamp tokens are allowed; TimestampRules orders them.
        # A copy: ``mask`` is self.suppress itself.
        mask = mask.copy()
        mask[self.tok.timestamp_begin:] = 0.0
        self.suppress_ts = mask
        self.suppress_begin_ts = mask + begin
        self.language_ids = np.array([self.tok.languages[c] for c in self.tok.languages], dtype=np.int64)
        self.timestamp_rules = TimestampRules(self.tok.timestamp_begin, self.tok.eot, self.tok.no_timestamps)

    # ------------------------------------------------------------------ input
    def validate(self, enc: EncoderOutput) -> None:
        x = enc.features
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise DecoderInputError(f"encoder output must be an array, got {type(x).__name__}")
        if len(x.shape) != 3:
            raise DecoderInputError(f"encoder output must have rank 3 [1, positions, width], got shape {tuple(x.shape)}")
        if x.shape[0] != 1:
            raise DecoderInputError(f"encoder output must hold one utterance (batch 1), got batch {x.shape[0]}")
        if x.shape[2] != self.width:
            raise DecoderInputError(
                f"encoder output width {x.shape[2]} does not match model {self.model.name} (width {self.width})")
        if not 1 <= x.shape[1] <= N_CTX_AUDIO:
            raise DecoderInputError(f"encoder output length {x.shape[1]} outside 1..{N_CTX_AUDIO} positions")
        if "float" not in str(x.dtype):  # numpy's float32, torch's torch.float16 ...
            raise DecoderInputError(f"encoder output must be floating point, got {x.dtype}")

    def prepare(self, enc: EncoderOutput) -> CrossAttention:
        """Validate, then project this request's cross-attention keys/values once."""
        self.validate(enc)
        return self.net.cross(enc.features, enc.tail_cached)

    # --------------------------------------------------------------- decoding
    def _run_prefix(self, cross: CrossAttention, opts: list[DecodeOptions], cache: SelfCache):
        """Feed prompt + start-of-transcript sequence for a batch whose prompts are equally long.

        Returns per row (language, no_speech_prob, prefix), the logits at the
        last prefix position [B, V] and the alignment heads' weights per row (or
        None). When a
        language must be detected, the prefix goes in two passes (up to sot,
        then the rest); otherwise in one.
        """
        tok = self.tok
        max_prompt = self.model.dims.n_text_ctx // 2 - 1
        heads = [[tok.sot_prev, *o.prompt_tokens[-max_prompt:]] if o.prompt_tokens else [] for o in opts]
        languages = []
        for o in opts:
            lang = o.language
            if tok.multilingual and lang is not None and lang not in tok.languages:
                _LOG.warning("language %r not known to model %s; detecting instead", lang, self.model.name)
                lang = None
            languages.append(lang if tok.multilingual else "en")
        alignment = any(o.record_alignment for o in opts)
        n_head = len(heads[0])
        if any(lang is None for lang in languages):
            logits, _ = self.net.step([h + [tok.sot] for h in heads], cache, cross, [-1])
            sot_logits = logits[:, 0]
            codes, probs = self._language_probs(sot_logits)
            languages = [lang or codes[i] for lang, i in zip(languages, probs.argmax(axis=-1).tolist())]
            rests = [self._sot(lang, o)[1:] for lang, o in zip(languages, opts)]
            logits, weights = self.net.step(rests, cache, cross, [-1], alignment)
        else:
            seqs = [h + self._sot(lang, o) for h, lang, o in zip(heads, languages, opts)]
            logits, weights = self.net.step(seqs, cache, cross, [n_head, -1], alignment)
            sot_logits = logits[:, 0]
        no_speech = scoring.softmax(sot_logits)[:, tok.no_speech].tolist()
        prefixes = [h + self._sot(lang, o) for h, lang, o in zip(heads, languages, opts)]
        return languages, no_speech, prefixes, logits[:, -1], weights

    def detect_language(self, cross: CrossAttention) -> tuple[str, float]:
        """(the likeliest language of the audio, its probability among the model's languages):
        the first step of decoding without a prompt, as ``_run_prefix`` detects."""
        logits, _ = self.net.step([[self.tok.sot]], self.net.new_cache(1), cross, [-1])
        codes, probs = self._language_probs(logits[:, -1])
        best = int(probs[0].argmax())
        return codes[best], float(probs[0, best])

    def _language_probs(self, sot_logits: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(the model's language codes, [B, languages] each row's probability of each) from the
        logits after start-of-transcript."""
        return list(self.tok.languages), scoring.softmax(sot_logits[:, self.language_ids])

    def _sot(self, language: str, opts: DecodeOptions) -> list[int]:
        seq = self.tok.sot_sequence(language)
        return seq[:-1] if opts.timestamps else seq  # without <|notimestamps|>

    def _masks(self, opts: DecodeOptions) -> tuple[np.ndarray, np.ndarray]:
        """(first step's, later steps') suppression masks."""
        if opts.timestamps:
            return self.suppress_begin_ts, self.suppress_ts
        return self.suppress_begin, self.suppress

    def _scores(self, logits: np.ndarray, suppress: np.ndarray, opts: DecodeOptions,
                sequences: list[list[int]]) -> np.ndarray:
        """Log-probabilities [B, V] after suppression (a new array: ``logits`` may be the
        network's output buffer, and the timestamp rules write into theirs)."""
        x = logits + suppress
        if opts.timestamps:
            x = self.timestamp_rules.apply(x, sequences)
        return scoring.log_softmax(x)

    def decode(self, cross: CrossAttention, opts: DecodeOptions) -> DecodeResult:
        cache = self.net.new_cache(1)
        started = (cache, self._run_prefix(cross, [opts], cache))
        language = started[1][0][0]
        beam = opts.beam_size if opts.beam_size_other is None or language == "en" else opts.beam_size_other
        if beam > 1:
            return self._beam(cross, opts, beam, started)
        return self._greedy([cross], [opts], started)[0]

    def decode_batch(self, crosses: list[CrossAttention], opts: list[DecodeOptions]) -> list[DecodeResult]:
        """Greedy decoding of several requests in one batch: each step reads the weights once
        for all of them. Requests are grouped by prompt length (positions must line up)."""
        results: list[Optional[DecodeResult]] = [None] * len(crosses)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, o in enumerate(opts):
            groups.setdefault((len(o.prompt_tokens), o.timestamps), []).append(i)
        for members in groups.values():
            for i, r in zip(members, self._greedy([crosses[i] for i in members], [opts[i] for i in members])):
                results[i] = r
        return results  # type: ignore[return-value]

    def _greedy(self, crosses: list[CrossAttention], opts: list[DecodeOptions], started=None) -> list[DecodeResult]:
        """``started``: (cache, _run_prefix's answer) when the prefix was already fed."""
        batch = len(crosses)
        cross = self.net.join(crosses)
        if started is None:
            cache = self.net.new_cache(batch)
            started = (cache, self._run_prefix(cross, opts, cache))
        cache, (languages, no_speech, prefixes, logits, w) = started
        # a network that cannot record a batch's weights leaves them to the alignment stage
        record = [o.record_alignment and w is not None for o in opts]
        rows = [[w[b][:, -1:]] if record[b] else [] for b in range(batch)]
        tokens: list[list[int]] = [[] for _ in range(batch)]
        looped = [False] * batch
        logprob_sum = [0.0] * batch
        limits = [min(o.max_tokens, self.model.dims.n_text_ctx - len(p) - 1) for o, p in zip(opts, prefixes)]
        active = [limit > 0 for limit in limits]
        suppress, later = self._masks(opts[0])  # a batch shares its options' timestamp mode
        last = [self.tok.eot] * batch
        while any(active):
            logp = self._scores(logits, suppress, opts[0], tokens)
            suppress = later
            best = logp.argmax(axis=-1).tolist()  # the first of equal maxima, as torch.argmax
            for b in range(batch):
                # the bonus steers the choice; the text's log-probability (the silence rule) stays the model's
                if active[b] and opts[b].boost is not None:
                    best[b] = int(opts[b].boost.scores(logp[b], tokens[b]).argmax())
            for b in range(batch):
                if active[b] and opts[b].stop is not None and opts[b].stop():
                    active[b] = False
                if not active[b]:
                    continue
                nxt = best[b]
                logprob_sum[b] += float(logp[b, nxt])
                if nxt == self.tok.eot:
                    active[b] = False
                    continue
                tokens[b].append(nxt)
                last[b] = nxt
                cut = loop_start(tokens[b])
                if cut is not None:
                    del tokens[b][cut:]
                    if record[b]:
                        del rows[b][cut + 1:]
                    looped[b] = True
                    active[b] = False
                elif len(tokens[b]) >= limits[b]:
                    active[b] = False
            if not any(active):
                break
            # finished rows keep stepping on a dummy token (their output is ignored): one
            # shape for the whole batch is cheaper than re-packing caches every time one ends
            step_logits, w = self.net.step([[t] for t in last], cache, cross, [-1], any(record))
            logits = step_logits[:, -1]
            for b in range(batch):
                if record[b] and active[b]:
                    rows[b].append(w[b])
        return [
            DecodeResult(
                tokens=tokens[b],
                language=languages[b],
                avg_logprob=logprob_sum[b] / (len(tokens[b]) + 1),
                no_speech_prob=no_speech[b],
                prefix=prefixes[b],
                alignment_weights=np.concatenate(rows[b], axis=1) if record[b] else None,
                looped=looped[b],
                self_cache=(cache, b),
            )
            for b in range(batch)
        ]

    def _beam(self, cross: CrossAttention, opts: DecodeOptions, beam: int, started) -> DecodeResult:
        """Beam search over the ``2 * beam`` best continuations of each step. As CTranslate2
        does (``beam_like_ctranslate2``; faster-whisper's length_penalty 1 and patience 1):
        only the ``beam`` best of them may finish (an end-of-text ranked lower is dropped), a
        finished reading is ranked by its log-probability (end-of-text's included) over its
        text tokens, and the search stops once ``beam`` readings have finished. Otherwise (the
        older rule) any end-of-text among the ``2 * beam`` finishes a reading, and the count
        includes end-of-text, so the search stops sooner."""
        cache, (languages, no_speeches, prefixes, logits, _) = started
        language, no_speech, prefix = languages[0], no_speeches[0], prefixes[0]
        limit = min(opts.max_tokens, self.model.dims.n_text_ctx - len(prefix) - 1)
        eot = self.tok.eot
        seqs: list[list[int]] = [[]]
        scores = np.zeros(1, dtype=np.float32)  # what ranks the beams: log-probability plus name bonuses
        model_scores = np.zeros(1, dtype=np.float32)  # the model's own log-probability
        finished: list[tuple[float, list[int], float]] = []  # (normalised score, tokens, sum logprob)
        like_ct2 = self.beam_like_ctranslate2
        suppress, later = self._masks(opts)
        for step in range(limit):
            if opts.stop is not None and opts.stop():
                break
            logp = self._scores(logits, suppress, opts, seqs)
            suppress = later
            ranked = logp if opts.boost is None else np.stack(
                [opts.boost.scores(logp[r], seq) for r, seq in enumerate(seqs)])
            total = (scores[:, None] + ranked).ravel()
            model_total = (model_scores[:, None] + logp).ravel()
            # largest first, equal scores by index: which candidates may finish and the order of
            # the finished readings (the first best wins) depend on it
            top_values, top_indices = scoring.topk(total, 2 * beam)
            new_seqs, new_scores, new_model, origins = [], [], [], []
            for rank, (score, flat) in enumerate(zip(top_values.tolist(), top_indices.tolist())):
                src, token = divmod(flat, logp.shape[1])
                own = float(model_total[flat])
                if token == eot or step == limit - 1:
                    seq = seqs[src] + ([] if token == eot else [token])
                    if not like_ct2:
                        finished.append((score / (len(seq) + 1), seq, own))
                    elif rank < beam:
                        finished.append((score / max(len(seq), 1), seq, own))
                else:
                    new_seqs.append(seqs[src] + [token])
                    new_scores.append(score)
                    new_model.append(own)
                    origins.append(src)
                if len(new_seqs) == beam:
                    break
            if len(finished) >= beam or not new_seqs:
                break
            seqs = new_seqs
            scores = np.array(new_scores, dtype=np.float32)
            model_scores = np.array(new_model, dtype=np.float32)
            # the prefix row is shared at first; from then on each beam keeps its own cache row
            cache.reorder(origins)
            logits = self.net.step([[s[-1]] for s in seqs], cache, cross, [-1])[0][:, -1]
        if not finished:
            finished = [(s / (max(len(q), 1) if like_ct2 else len(q) + 1), q, m)
                        for s, q, m in zip(scores.tolist(), seqs, model_scores.tolist())]
        best = max(finished, key=lambda f: f[0])
        return DecodeResult(tokens=best[1], language=language, avg_logprob=best[2] / (len(best[1]) + 1),
                            no_speech_prob=no_speech, prefix=prefix)

    def compare(self, cross: CrossAttention, prefix: list[int], original: list[int],
                alternatives: list[list[int]], decoded: Optional[DecodeResult] = None) -> list[float]:
        """How much less (negative) or more likely each alternative token sequence is than
        ``original`` over this audio, teacher-forced: for each, the log-probability of the
        tokens where it differs plus the one after (the next word must still fit), minus the
        original's over the same stretch. One batched pass that starts after the tokens all
        share (taken from ``decoded``'s greedy cache where it holds them); the vocabulary
        projection runs only where it is needed."""
        rows = [original, *alternatives]
        spans = []  # per row: [first, end) of the tokens that are scored
        for alt in alternatives:
            head = 0
            while head < min(len(alt), len(original)) and alt[head] == original[head]:
                head += 1
            tail = 0
            while tail < min(len(alt), len(original)) - head and alt[-1 - tail] == original[-1 - tail]:
                tail += 1
            spans.append(((head, len(alt) - tail + 1), (head, len(original) - tail + 1)))
        shared = min(first for (first, _), _ in spans) if spans else 0
        ends = [len(original) + 1] + [end for (_, end), _ in spans]
        length = max(ends)
        if len(prefix) + length > self.model.dims.n_text_ctx:
            raise ValueError("sequence longer than the decoder's context")
        eot = self.tok.eot
        padded = [(r + [eot] * length)[:length] for r in rows]
        n = len(rows)
        # the last shared token predicts the first that may differ: it is fed (again) first
        start = len(prefix) + shared - 1
        max_len = len(prefix) + length
        if decoded is not None and decoded.self_cache is not None and decoded.prefix == prefix \
                and decoded.tokens[:shared] == original[:shared]:
            source, row = decoded.self_cache
        else:
            source, row = self.net.new_cache(1, max_len=max_len), 0
            self.net.step([prefix + original[:shared]], source, cross, [-1])
        cache = source.fork(row, start, n, max_len=max_len)
        # only the positions some row scores are projected onto the vocabulary
        scored = [span for pair in spans for span in pair]
        lo = min(first for first, _ in scored) - shared
        hi = max(end for _, end in scored) - shared
        fed = [([(prefix + original)[start]] + r[shared:])[:length - shared] for r in padded]
        logits, _ = self.net.step(fed, cache, cross, list(range(lo, hi)))

        def logprobs(row: int, first: int, end: int) -> float:
            # logits[:, i] predicts token shared + lo + i of the row
            want = padded[row][first:end]
            scores = logits[row, first - shared - lo:end - shared - lo] + self.suppress
            return float(scoring.log_softmax(scores)[np.arange(len(want)), want].sum())

        return [logprobs(r + 1, *alt_span) - logprobs(0, *orig_span)
                for r, (alt_span, orig_span) in enumerate(spans)]

    def alignment_pass(self, cross: CrossAttention, result: DecodeResult) -> np.ndarray:
        """Teacher-forced pass over prefix + text: alignment-head weights [heads, n+1, S]."""
        cache = self.net.new_cache(1)
        _, w = self.net.step([result.prefix + result.tokens], cache, cross, [-1], alignment=True)
        rows = w[0]
        start = len(result.prefix) - 1
        return rows[:, start:start + len(result.tokens) + 1]

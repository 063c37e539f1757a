"""Whisper's BPE tokenizer (``tokenizers`` library) plus its special tokens."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from .ct2 import ModelFileError

_LOG = logging.getLogger(__name__)

N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>: the last rows of every Whisper vocabulary


def _restore_merges(spec: dict) -> None:
    """Put back BPE merges a converted ``tokenizer.json`` lost.

    The bundled base model's file lacks GPT-2's first merge ("Ġ t", the one that
    makes token 256): decoding is unaffected, but encoding splits every word
    that starts with t (" timer" -> " ", "timer"), tokens the model never saw
    there, so prompts and name biasing would miss them. In a byte-level BPE
    vocabulary, merge k makes token 256 + k; a token below end-of-text that no
    merge makes gets the merge of its longest known prefix and the rest, at that rank.
    """
    model = spec.get("model") or {}
    vocab, merges = model.get("vocab"), model.get("merges")
    if model.get("type") != "BPE" or not isinstance(vocab, dict) or not isinstance(merges, list) or not merges:
        return
    as_pairs = not isinstance(merges[0], str)
    made = {"".join(m) if as_pairs else m.replace(" ", "") for m in merges}
    eot = vocab.get("<|endoftext|>", len(vocab))
    restored = []
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if not 256 <= i < eot or token in made or len(token) < 2:
            continue
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.insert(min(i - 256, len(merges)), [left, right] if as_pairs else f"{left} {right}")
                restored.append(token)
                break
    if restored:
        _LOG.info("tokenizer: restored %d missing BPE merge(s) (%s)", len(restored), ", ".join(restored[:5]))


def load_bpe(tokenizer_json: Path) -> Tokenizer:
    """tokenizer.json as a ``tokenizers`` Tokenizer, its lost merges restored (~0.2 s for base)."""
    try:
        spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        _restore_merges(spec)
        return Tokenizer.from_str(json.dumps(spec))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise ModelFileError(f"{tokenizer_json}: cannot load tokenizer: {err}") from None


@dataclass
class WhisperTokenizer:
    tokenizer: Tokenizer
    eot: int
    sot: int
    sot_prev: int
    transcribe: int
    translate: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int
    # language code -> token id, empty for English-only models
    languages: dict[str, int] = field(default_factory=dict)

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    @classmethod
    def from_files(cls, tokenizer_json: Path, lang_ids: list[int], n_vocab: int | None = None) -> "WhisperTokenizer":
        """``lang_ids``: config.json's language token ids (may be empty: then the tokenizer's own
        language tokens). ``n_vocab``: the model's embedding rows, checked against the special
        tokens, which sit at different ids in each of Whisper's three vocabularies."""
        return cls.from_bpe(load_bpe(tokenizer_json), tokenizer_json, lang_ids, n_vocab)

    @classmethod
    def from_bpe(cls, tok: Tokenizer, tokenizer_json: Path, lang_ids: list[int],
                 n_vocab: int | None = None) -> "WhisperTokenizer":
        """``from_files`` after ``load_bpe`` (the costly half, which the loader runs beside
        reading the weights)."""

        def tid(text: str) -> int:
            i = tok.token_to_id(text)
            if i is None:
                raise ModelFileError(f"{tokenizer_json}: special token {text} missing; not a Whisper tokenizer")
            return i

        eot, sot, translate = tid("<|endoftext|>"), tid("<|startoftranscript|>"), tid("<|translate|>")
        no_ts = tid("<|notimestamps|>")
        timestamp_begin = no_ts + 1
        if n_vocab is not None and n_vocab - timestamp_begin != N_TIMESTAMPS:
            # a tokenizer of another Whisper vocabulary would read every special token wrongly
            raise ModelFileError(
                f"{tokenizer_json} does not match model.bin: its timestamps start at {timestamp_begin}, so the "
                f"model should have {timestamp_begin + N_TIMESTAMPS} vocabulary rows, but it has {n_vocab} "
                f"(51864 English-only, 51865 multilingual, 51866 large-v3)")
        # Language tokens sit between start-of-transcript and translate. Converters differ on
        # lang_ids (absent, empty, or, for English-only models, off by one), so only ids in that
        # range count, and without any the tokenizer's own are used.
        in_range = [i for i in lang_ids if sot < i < translate] or list(range(sot + 1, translate))
        languages = {}
        for i in in_range:
            text = tok.id_to_token(i) or ""
            if text.startswith("<|") and text.endswith("|>"):
                languages[text[2:-2]] = i
        # By the vocabulary size, as openai-whisper decides (n_vocab >= 51865): English-only
        # tokenizers carry language tokens too, which those models were never trained on.
        multilingual = n_vocab >= 51865 if n_vocab is not None else eot == 50257
        if not multilingual:
            languages = {}
        no_speech = tok.token_to_id("<|nospeech|>") or tok.token_to_id("<|nocaptions|>")
        if no_speech is None:
            no_speech = no_ts - 1
        return cls(
            tokenizer=tok,
            eot=eot,
            sot=sot,
            sot_prev=tid("<|startofprev|>"),
            transcribe=tid("<|transcribe|>"),
            translate=translate,
            no_timestamps=no_ts,
            no_speech=no_speech,
            timestamp_begin=timestamp_begin,
            languages=languages,
        )

    def sot_sequence(self, language: str | None) -> list[int]:
        if not self.multilingual:
            return [self.sot, self.no_timestamps]
        return [self.sot, self.languages[language or "en"], self.transcribe, self.no_timestamps]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self.eot], skip_special_tokens=True)

    def decode_piece(self, ids: list[int]) -> str:
        """Text of a few tokens without stripping leading spaces (for word splitting)."""
        return self.tokenizer.decode(ids, skip_special_tokens=False)

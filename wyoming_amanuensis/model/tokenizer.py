"""Whisper's BPE tokenizer (``tokenizers`` library) plus its special tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from .ct2 import ModelFileError


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
    def from_files(cls, tokenizer_json: Path, lang_ids: list[int]) -> "WhisperTokenizer":
        try:
            tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise ModelFileError(f"{tokenizer_json}: cannot load tokenizer: {err}") from None

        def tid(text: str) -> int:
            i = tok.token_to_id(text)
            if i is None:
                raise ModelFileError(f"{tokenizer_json}: special token {text} missing")
            return i

        languages = {}
        for i in lang_ids:
            text = tok.id_to_token(i) or ""
            if text.startswith("<|") and text.endswith("|>"):
                languages[text[2:-2]] = i
        eot = tid("<|endoftext|>")
        multilingual = eot == 50257
        if not multilingual:
            languages = {}
        no_ts = tid("<|notimestamps|>")
        no_speech = tok.token_to_id("<|nospeech|>") or tok.token_to_id("<|nocaptions|>")
        if no_speech is None:
            no_speech = no_ts - 1
        return cls(
            tokenizer=tok,
            eot=eot,
            sot=tid("<|startoftranscript|>"),
            sot_prev=tid("<|startofprev|>"),
            transcribe=tid("<|transcribe|>"),
            translate=tid("<|translate|>"),
            no_timestamps=no_ts,
            no_speech=no_speech,
            timestamp_begin=no_ts + 1,
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

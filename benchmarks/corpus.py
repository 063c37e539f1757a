"""The shared speech corpus (NAME.wav + NAME.txt) and WER scoring, for tests and benchmarks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
from whisper_normalizer.english import EnglishTextNormalizer

CORPUS_DIR = Path(os.environ.get("AMANUENSIS_CORPUS", Path(__file__).resolve().parents[1].parent / "shared" / "corpus"))

# Clips longer than this are not "short commands" (jfk is 11 s).
SHORT_COMMAND_S = 6.0


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    reference: str

    def read(self) -> tuple[np.ndarray, int]:
        samples, rate = sf.read(str(self.path), dtype="float32", always_2d=False)
        return samples, rate

    @property
    def seconds(self) -> float:
        return sf.info(str(self.path)).duration


def clips(directory: Path = CORPUS_DIR) -> list[Clip]:
    out = []
    for wav in sorted(Path(directory).glob("*.wav")):
        txt = wav.with_suffix(".txt")
        if txt.is_file():
            out.append(Clip(wav.stem, wav, txt.read_text(encoding="utf-8").strip()))
    return out


@lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Case, punctuation and number words folded the way Whisper's evaluations do."""
    return _normalizer()(text)


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate (0..1+) after normalisation."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])

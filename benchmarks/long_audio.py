"""Long utterances built from the corpus, and the checks that no sentence was lost or doubled.

The corpus has one long clip (jfk, 11 s) and many 2-4 s commands; a long
utterance is jfk followed by distinct commands with short gaps, every clip
once, so that each reference sentence must appear exactly once in the
transcript.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from benchmarks.corpus import SHORT_COMMAND_S, Clip, clips, normalize
from wyoming_amanuensis.audio import SAMPLE_RATE, to_16k

GAP_S = 0.6  # a pause between sentences, as in dictation


@dataclass
class LongUtterance:
    audio: np.ndarray  # 16 kHz mono float32
    clips: list[Clip]  # in order

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE

    @property
    def reference(self) -> str:
        return " ".join(c.reference for c in self.clips)


def long_utterance(seconds: float, offset: int = 0, gap_s: float = GAP_S) -> LongUtterance:
    """jfk, then distinct short commands (from the ``offset``-th on, in name order) until ``seconds``."""
    pool = clips()
    long_ones = [c for c in pool if c.seconds > SHORT_COMMAND_S]
    short = [c for c in pool if c.seconds <= SHORT_COMMAND_S]
    short = short[offset:] + short[:offset]
    chosen, parts, total = [], [], 0.0
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    for clip in long_ones + short:
        x = to_16k(*clip.read())[0]
        if total + x.shape[0] / SAMPLE_RATE > seconds:
            if total >= seconds - 4.0:
                break
            continue
        chosen.append(clip)
        parts += [x, gap]
        total += (x.shape[0] + gap.shape[0]) / SAMPLE_RATE
    if total < seconds - 4.0:
        raise ValueError(f"the corpus holds only {total:.0f} s of distinct clips")
    return LongUtterance(audio=np.concatenate(parts), clips=chosen)


@dataclass
class SentenceCheck:
    missing: list[str]  # references of which under half the words were heard
    repeated: list[str]  # references heard more than once
    inserted_words: int  # hypothesis words aligned to no reference word


def check_sentences(references: list[str], hypothesis: str) -> SentenceCheck:
    """Aligns the hypothesis's words to the joined references (normalised) and reads off, per
    sentence, whether it was heard at all and whether it was heard twice."""
    ref_words: list[str] = []
    owner: list[int] = []
    for i, ref in enumerate(references):
        words = normalize(ref).split()
        ref_words += words
        owner += [i] * len(words)
    hyp_words = normalize(hypothesis).split()
    matcher = difflib.SequenceMatcher(a=ref_words, b=hyp_words, autojunk=False)
    matched = [0] * len(references)
    inserted = 0
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(a0, a1):
                matched[owner[k]] += 1
        elif tag == "insert":
            inserted += b1 - b0
        elif tag == "replace":
            inserted += max(0, (b1 - b0) - (a1 - a0))
    missing = [r for i, r in enumerate(references) if matched[i] * 2 < len(normalize(r).split())]
    hyp = " " + " ".join(hyp_words) + " "
    repeated = [r for r in references
                if len(normalize(r).split()) >= 3 and hyp.count(" " + normalize(r) + " ") > 1]
    return SentenceCheck(missing=missing, repeated=repeated, inserted_words=inserted)

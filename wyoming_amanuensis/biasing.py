"""Bias the transcript toward the names in the user's home, at a cost that does not grow with the home.

The default, **snap** (``--names-snap``, ``--names-snap-margin``; the pipeline's names stage):
after decoding, :func:`readings` lists the transcripts in which one run of words is read as a
known name it may be a mishearing of ("bad light" -> "Bed Light", "chocolate list" -> "Shopping
List", "bedlight", "Party Timescript"); the pipeline has the decoder score them against the
audio (``Decoder.compare``) and :func:`choose` keeps one only when the model finds it nearly as
likely as what it decoded (outside English, a name said declined keeps its ending:
DECLINED_MARGIN). The string match is rapidfuzz's C loop over the names (about a
millisecond for hundreds); the audio check runs only when there is a candidate.

Options, off by default because they measured worse (RESULTS.md, "Issue 11"):

* **boost** (``--names-boost``): a token trie of the names; during decoding a token that
  starts a name gets half the bonus and one that continues a name already begun the whole
  of it (shallow fusion). Per step a vector add and a lookup over the last few tokens,
  whatever the number of names; the trie is built once per list.
* **prompt** (``--names-prompt``, wyoming-faster-whisper's way): the names in Whisper's
  prompt, reprocessed by the decoder on every request, so its cost grows with the list.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np
from rapidfuzz import fuzz, process

if TYPE_CHECKING:
    from .model.tokenizer import WhisperTokenizer

# Bounds that keep a hostile or enormous list cheap: a name is a few words, a home a few thousand.
MAX_NAMES = 4000
MAX_NAME_CHARS = 64
MAX_NAME_WORDS = 6
# Below this many letters a near miss is too likely to be an ordinary word ("TV" ~ "to").
SNAP_MIN_CHARS = 5
# A run of words that reads as a name run together or split apart must be this alike.
JOINED_MIN = 0.9
# A run that shares no word with a name must be this alike it ("bed lite"), not merely related.
UNSHARED_MIN = 0.7
# A run read as a name may have this many letters more or fewer than the name (or a quarter of the
# name's, if more): "Garage-Tour" is not the name "Garage" with a word left out (corpus_ml, de_006).
LENGTH_SLACK = 2
# Outside English, a run that is the name with other word endings ("lampę główną" for "Lampa
# główna": each word the same stem, 3+ letters and 60 % of the word, and endings of up to 3
# letters; "lampoda" is a mishearing of "Lampada", not a form of it) is the name declined, as
# Polish, Czech, Russian or Romanian commands say it, or in the plural. Such a reading replaces the
# words heard only when the model finds the name's own form about as likely (at most this many
# nats less), not merely within the margin: declined, the model scores the name's form 5-6 nats
# below the form said, while a near tie ("nestore" / "Nestor", 0.15 nats) is a mishearing. English
# does not decline names, and a final "s" is easily misheard: "standing lights" for the name
# "Standing Light" scores the same 4.5 nats below and is snapped (RESULTS.md, session 9).
DECLINED_MARGIN = 1.0
DECLINED_STEM = 3
DECLINED_ENDING = 3

_WORD_CORE = re.compile(r"[\W_]+", re.UNICODE)


def clean_names(items: Iterable[str]) -> tuple[str, ...]:
    """Whitespace collapsed, empties and over-long items dropped, duplicates (ignoring
    case) removed keeping the first; linear in the list and bounded."""
    seen: dict[str, str] = {}
    for item in items:
        if len(seen) >= MAX_NAMES:
            break
        if not isinstance(item, str) or len(item) > 4 * MAX_NAME_CHARS:
            continue
        name = " ".join(item.split())
        if not name or len(name) > MAX_NAME_CHARS or name.count(" ") >= MAX_NAME_WORDS:
            continue
        seen.setdefault(name.casefold(), name)
    return tuple(seen.values())


# ---------------------------------------------------------------------------
# boost: a token trie consulted at each decoding step

class NameTrie:
    """The token sequences of every name, as Whisper would write it mid-sentence
    (leading space; as given, lower case, capitalised), in a trie."""

    def __init__(self, tokenizer: WhisperTokenizer, names: tuple[str, ...]):
        self.root: dict[int, dict] = {}
        self.depth = 0
        for name in names:
            for variant in {name, name.lower(), name[:1].upper() + name[1:]}:
                ids = tokenizer.encode(" " + variant)
                node = self.root
                for t in ids:
                    node = node.setdefault(t, {})
                self.depth = max(self.depth, len(ids))
        self.starts = list(self.root)

    def continuations(self, tokens: list[int]) -> set[int]:
        """Tokens that would continue a name begun within the last ``depth`` tokens."""
        out: set[int] = set()
        for begin in range(max(0, len(tokens) - self.depth + 1), len(tokens)):
            node = self.root
            for t in tokens[begin:]:
                node = node.get(t)
                if node is None:
                    break
            else:
                out.update(node)
        return out


@dataclass
class NameBoost:
    """What the decoder adds to the log-probabilities of one request (float32 numpy, the search's side)."""

    trie: NameTrie
    start: np.ndarray  # [vocab] float32: the start bonus on every token that begins a name
    bonus: float  # on a token that continues a name already begun

    def scores(self, logp: np.ndarray, tokens: list[int]) -> np.ndarray:
        """``logp`` [vocab] (or [beams, vocab] for one shared history) plus the bonuses, a new array."""
        out = logp + self.start
        cont = self.trie.continuations(tokens)
        if cont:
            out[..., sorted(cont)] += np.float32(self.bonus)  # in float32, as torch added it
        return out


_TRIES: "OrderedDict[tuple[int, tuple[str, ...]], tuple[WhisperTokenizer, NameTrie]]" = OrderedDict()
_TRIES_KEPT = 16
_TRIES_LOCK = threading.Lock()


def _trie(tokenizer: WhisperTokenizer, names: tuple[str, ...]) -> NameTrie:
    """Built once per (model, list): the home's list changes rarely, so building it
    (about 1 ms per 100 names) is not paid per request. Keyed by the tokenizer's
    identity (one per loaded model), which is checked, not just its id."""
    key = (id(tokenizer), names)
    with _TRIES_LOCK:
        hit = _TRIES.get(key)
        if hit is not None and hit[0] is tokenizer:
            _TRIES.move_to_end(key)
            return hit[1]
    trie = NameTrie(tokenizer, names)
    with _TRIES_LOCK:
        _TRIES[key] = (tokenizer, trie)
        while len(_TRIES) > _TRIES_KEPT:
            _TRIES.popitem(last=False)
    return trie


def name_boost(tokenizer: WhisperTokenizer, names: tuple[str, ...], bonus: float,
               n_vocab: int) -> Optional[NameBoost]:
    if not names or bonus <= 0:
        return None
    trie = _trie(tokenizer, names)
    start = np.zeros(n_vocab, dtype=np.float32)
    # a name's first token gets half the bonus: enough to tip a near tie toward the name,
    # not enough to start names where none was said
    start[trie.starts] = bonus / 2
    return NameBoost(trie=trie, start=start, bonus=bonus)


# ---------------------------------------------------------------------------
# snap: words that nearly read as a name, replaced when the audio agrees

def _key(text: str) -> str:
    return _WORD_CORE.sub("", text).casefold()


@dataclass(frozen=True)
class _Name:
    text: str
    key: str  # letters and digits, case folded: "Bed Light" -> "bedlight"
    words: tuple[str, ...]  # the same per word


@lru_cache(maxsize=16)
def _snappable(names: tuple[str, ...]) -> tuple[tuple[_Name, ...], tuple[str, ...], frozenset]:
    """The names long enough to be matched fuzzily, their keys, and every name's words."""
    out = []
    for n in names:
        words = tuple(_key(w) for w in n.split())
        if len(key := "".join(words)) >= SNAP_MIN_CHARS:
            out.append(_Name(n, key, words))
    return tuple(out), tuple(n.key for n in out), frozenset(tuple(_key(w) for w in n.split()) for n in names)


def _words_alike(said: str, name: str) -> bool:
    """One word of a run against the name's word in the same place: short words must be
    the same ("the" is not "Path", "to" is not "TV"); longer ones need not be far off."""
    if said == name:
        return True
    return min(len(said), len(name)) >= 3 and fuzz.ratio(said, name) >= 60


def _declined(cores: list[str], name_words: tuple[str, ...]) -> bool:
    """Whether a run of words is the name with other word endings (DECLINED_MARGIN)."""
    if len(cores) != len(name_words) or tuple(cores) == name_words:
        return False
    for said, word in zip(cores, name_words):
        stem = len(os.path.commonprefix([said, word]))
        if said != word and (stem < max(DECLINED_STEM, 0.6 * max(len(said), len(word)))
                             or len(said) - stem > DECLINED_ENDING or len(word) - stem > DECLINED_ENDING):
            return False
    return True


def _match(cores: list[str], name: _Name, similarity: float) -> Optional[str]:
    """Whether a run of words (their keys) may be a mishearing of ``name``; the
    leftover of its last word when it ran into the next one, else "".

    The run has the name's number of words and either each is alike its
    counterpart or one of them is the name's own word ("chocolate list" may be
    "Shopping List": the audio decides); or it is the name run together
    ("bedlight") or split ("Eco Bee"), nearly letter for letter; or its last word
    runs the name's last word into the next one ("Party Timescript").
    """
    leftover = ""
    if len(cores) == len(name.words):
        last, want = cores[-1], name.words[-1]
        if len(cores) > 1 and last != want and last.startswith(want) and len(last) - len(want) >= 4:
            leftover, cores = last[len(want):], cores[:-1] + [want]
        if not any(c == w for c, w in zip(cores, name.words)):
            # nothing heard as the name's own word: every word must be alike, the whole closely
            if not all(_words_alike(c, w) for c, w in zip(cores, name.words)):
                return None
            similarity = max(similarity, UNSHARED_MIN)
    else:  # run together, split apart or split elsewhere ("stand de lamp"): nearly letter for letter
        similarity = max(similarity, JOINED_MIN)
    span = "".join(cores)
    if (tuple(cores) == name.words and not leftover) or fuzz.ratio(span, name.key) < similarity * 100:
        return None
    if abs(len(span) - len(name.key)) > max(LENGTH_SLACK, len(name.key) // 4):
        return None
    return leftover


@dataclass(frozen=True)
class Reading:
    """The transcript with one run of words read as a name."""

    text: str
    name: str
    start: int  # word index of the run
    end: int
    declined: bool = False  # the run is the name with other word endings (DECLINED_MARGIN)
    # What the model scores: ``text`` with the name in the case the words were heard in
    # ("staande lamp"). Whisper scores a capitalised name mid-sentence several nats below the
    # same words in lower case (corpus_ml's nl_009: 8.4 against 0.6 nats below what it decoded),
    # which kept names it had heard from being read; the transcript takes the name's spelling.
    scored: str = ""  # empty: ``text``

    def __post_init__(self):
        if not self.scored:
            object.__setattr__(self, "scored", self.text)


def readings(text: str, names: tuple[str, ...], similarity: float, limit: int = 3,
             language: Optional[str] = None) -> list[Reading]:
    """Alternative transcripts, each with one run of words replaced by a name it
    nearly reads as (the most alike first, at most ``limit``). Linear in the
    names: each run is compared against all of them in rapidfuzz's C loop.
    ``language``: the transcript's; outside English a run that is the name with
    other endings is marked ``declined`` (DECLINED_MARGIN)."""
    if not names or similarity <= 0 or not text:
        return []
    candidates, keys, exact = _snappable(names)
    if not candidates:
        return []
    words = text.split()
    cores = [_key(w) for w in words]
    longest = max(len(n.words) for n in candidates)
    # words that already read as a known name were heard as one: not re-read as another
    heard = [False] * len(words)
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + MAX_NAME_WORDS) + 1):
            if tuple(cores[i:j]) in exact:
                heard[i:j] = [True] * (j - i)
    found: list[tuple[float, Reading]] = []
    cutoff = similarity * 100
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + longest + 1) + 1):  # + 1: a name heard split once more
            span = "".join(cores[i:j])
            if not cores[i] or not cores[j - 1] or len(span) < SNAP_MIN_CHARS or any(heard[i:j]):
                continue
            for _, score, k in process.extract(span, keys, scorer=fuzz.ratio, score_cutoff=cutoff, limit=None):
                leftover = _match(cores[i:j], candidates[k], similarity)
                if leftover is None:
                    continue
                last = words[j - 1]
                tail = re.search(r"\W*$", last).group(0)
                rest = " " + last[:len(last) - len(tail)][-len(leftover):] if leftover else ""
                name = candidates[k].text
                new = " ".join([*words[:i], name + rest + tail, *words[j:]])
                heard_lower = words[i][:1].islower()
                scored = " ".join([*words[:i], name.lower() + rest + tail, *words[j:]]) if heard_lower else new
                declined = language != "en" and not leftover and _declined(cores[i:j], candidates[k].words)
                found.append((score, Reading(new, name, i, j, declined, scored)))
    found.sort(key=lambda f: -f[0])
    return [r for _, r in found[:limit]]


def choose(readings_: list[Reading], deltas: list[float], margin: float) -> Optional[Reading]:
    """The reading the audio supports best, if the model finds it at most ``margin``
    nats less likely than what it decoded (a name it was unsure of, not one it
    clearly did not hear); a declined one at most DECLINED_MARGIN less. When the best
    is a declined name refused so, the words were that name declined: nothing replaces them.
    ``deltas``: the model's log-probability of each reading's ``scored`` text less that of
    the decoded text."""
    best = max(range(len(readings_)), key=lambda k: deltas[k], default=None)
    if best is None or deltas[best] < -(min(margin, DECLINED_MARGIN) if readings_[best].declined else margin):
        return None
    return readings_[best]

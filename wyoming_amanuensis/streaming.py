"""Streaming partial transcripts: turn successive partial decodes into append-only text chunks."""

from __future__ import annotations

from typing import Optional


class Stabilizer:
    """Turns successive partial hypotheses into appended text chunks.

    A word is sent once two consecutive partial decodes agree on it and on
    everything before it (local agreement), so chunks are rarely wrong and
    never retracted: concatenated they form a prefix of the final text, and
    :meth:`finish` sends the rest. If the final text revised an already sent
    word, the final ``transcript`` event is the authority."""

    def __init__(self) -> None:
        self.sent = ""
        self._committed: list[str] = []
        self._previous: Optional[list[str]] = None

    def update(self, text: str) -> str:
        words = text.split()
        delta = ""
        if self._previous is not None:
            n = 0
            for a, b in zip(self._previous, words):
                if a != b:
                    break
                n += 1
            k = len(self._committed)
            if n > k and words[:k] == self._committed:
                delta = (" " if self.sent else "") + " ".join(words[k:n])
                self._committed = words[:n]
                self.sent += delta
        self._previous = words
        return delta

    def finish(self, final: str) -> str:
        if not self.sent:
            return final
        if final.startswith(self.sent):
            return final[len(self.sent):]
        return ""

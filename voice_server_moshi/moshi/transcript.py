"""Agent transcript: Moshi's text pieces joined into words (ADR 0021).

Kyutai's servers send one SentencePiece piece per text token, with "▁" already replaced by
a space, so a piece that begins with whitespace begins a new word (``" hel"``, ``"lo"``,
``","``, ``" world"``). PAD tokens are never sent; they show up as gaps in time.

Rules, on the agent's stream clock (ms of agent audio received, so they do not depend on
network timing):

* every piece gives a ``final=False`` transcript holding the word so far (``"hel"``,
  ``"hello"``), so a consumer sees text as soon as Moshi says it;
* a word becomes final, once, as a ``final=True`` transcript of the whole word, at the
  first of: the next piece that begins with whitespace; ``pause_ms`` of agent stream time
  without a piece (Moshi stopped talking); the end of the session (:meth:`flush`);
* words are emitted without surrounding whitespace; whitespace anywhere in a piece closes
  the current word (an all-whitespace piece only does that);
* a piece without leading whitespace after a word was closed by a pause starts a new word
  (the model resumed mid-word after a long gap; the text is not lost).
"""

from __future__ import annotations

import re

from ..events import Role, Transcript

__all__ = ["DEFAULT_PAUSE_MS", "AgentWords"]

#: Agent stream time without a text piece after which the current word is final: five
#: Moshi frames. Moshi puts PAD tokens between words (not sent), so a shorter gap would
#: close words mid-utterance for nothing; a longer one delays the last word's finality.
DEFAULT_PAUSE_MS = 400.0

_WS = re.compile(r"(\s+)")


class AgentWords:
    """Assembles text pieces into word transcripts. Pure; no I/O, no clock of its own."""

    def __init__(self, pause_ms: float = DEFAULT_PAUSE_MS, role: Role = "agent") -> None:
        if pause_ms <= 0:
            raise ValueError(f"pause_ms must be > 0, got {pause_ms}")
        self.pause_ms = pause_ms
        #: Whose words: the same rules assemble the caller's STT pieces (ADR 0075).
        self.role: Role = role
        self._word = ""
        self._last_piece_ms = 0.0

    @property
    def pending(self) -> str:
        """The word being assembled, not yet final."""
        return self._word

    def feed(self, piece: str, t_ms: float) -> list[Transcript]:
        """One text piece at agent stream time ``t_ms``; returns the transcripts it makes."""
        out = self.advance(t_ms)
        self._last_piece_ms = t_ms
        for part in _WS.split(piece):
            if not part:
                continue
            if part.isspace():
                out += self.flush()
            else:
                self._word += part
                out.append(Transcript(role=self.role, text=self._word, final=False))
        return out

    def advance(self, t_ms: float) -> list[Transcript]:
        """Agent stream time moved on to ``t_ms``; closes the word after a pause."""
        if self._word and t_ms - self._last_piece_ms >= self.pause_ms:
            return self.flush()
        return []

    def flush(self) -> list[Transcript]:
        """Close the current word (end of session, or a boundary)."""
        if not self._word:
            return []
        word, self._word = self._word, ""
        return [Transcript(role=self.role, text=word, final=True)]

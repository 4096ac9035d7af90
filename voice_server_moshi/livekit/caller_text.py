"""The caller's words (the adapter's caller transcripts, one word at a time) as LiveKit's
user transcription: interim events while a turn's words come, one final per caller turn.

The adapter's speech-to-text runs behind the caller's audio, and flushes its last words
when the caller stops: a turn's transcript is final ``settle_ms`` of call time after the
turn ended (or when the next turn starts, or the call ends), so the late words are in it.
"""

from __future__ import annotations

import time

from livekit.agents import llm
from livekit.agents.utils import shortuuid

__all__ = ["CallerText"]

#: Call time after the end of a caller turn before its transcript is final (ms): about
#: the speech-to-text's delay plus its flush.
SETTLE_MS = 1000.0


class CallerText:
    def __init__(self, settle_ms: float = SETTLE_MS) -> None:
        self.settle_ms = settle_ms
        self._id = shortuuid("caller_")
        self._started_at: float | None = None
        self._words: list[str] = []
        self._partial = ""
        self._ended_ms: float | None = None

    def turn_started(self) -> llm.InputTranscriptionCompleted | None:
        """A caller turn starts: the previous one's transcript is final now."""
        final = self._final()
        self._started_at = time.time()
        return final

    def turn_ended(self, now_ms: float) -> None:
        self._ended_ms = now_ms

    def word(self, text: str, final: bool) -> llm.InputTranscriptionCompleted:
        if self._started_at is None:  # words before any turn decision: they start one
            self._started_at = time.time()
        if final:
            self._words.append(text)
            self._partial = ""
        else:
            self._partial = text
        return self._event(" ".join([*self._words, self._partial]).strip(), is_final=False)

    def tick(self, now_ms: float) -> llm.InputTranscriptionCompleted | None:
        """Called every frame: the transcript is final once the turn has settled."""
        if self._ended_ms is not None and now_ms - self._ended_ms >= self.settle_ms:
            return self._final()
        return None

    def close(self) -> llm.InputTranscriptionCompleted | None:
        return self._final()

    def _final(self) -> llm.InputTranscriptionCompleted | None:
        if self._partial:
            self._words.append(self._partial)
        text = " ".join(self._words).strip()
        ev = self._event(text, is_final=True) if text else None
        self._id = shortuuid("caller_")
        self._words, self._partial, self._ended_ms = [], "", None
        return ev

    def _event(self, text: str, *, is_final: bool) -> llm.InputTranscriptionCompleted:
        return llm.InputTranscriptionCompleted(
            item_id=self._id, transcript=text, is_final=is_final,
            turn_started_at=self._started_at)

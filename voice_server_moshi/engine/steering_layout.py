"""How forced text is laid out on Moshi's text stream (ADR 0070).

Moshi's inner monologue is one text token per 80 ms frame, time-aligned with its speech:
a word's SentencePiece tokens start at the frame the word starts, ``PAD`` fills the frames
between words, and ``EPAD`` (end of padding) sits in the frame just before a word that
follows padding. Kyutai's STT tooling reads word boundaries from exactly that (a word is
what lies between one ``EPAD`` and the next) and its TTS state machine feeds a word's
tokens after the model signals a new word. This module turns host text into that layout:

* :func:`words_of` splits text into :class:`Word` entries (tokens per whitespace word,
  pieces the stream cannot carry dropped) with a frame budget from a speaking rate;
* :func:`timed_actions` lays words out over a fixed span of frames (say-audio, where
  the audio fixes the timing).

Pure Python: no torch; the tokenizer is anything with ``encode(str) -> list[int]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

#: Moshi's frame rate (Mimi at 24 kHz, 1920-sample frames).
FRAME_RATE_HZ = 12.5


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class Pacing:
    """The natural pace of forced text (ADR 0070 has the figures behind the defaults).

    Attributes:
        chars_per_s: Speaking rate in characters per second, a word's trailing space
            included. 14 is about 150 words a minute of English (4.7 letters a word).
        comma_pause_frames: Extra frames a word ending in ``,;:`` may be followed by.
        sentence_pause_frames: Extra frames after a word ending in ``.?!``.
    """

    chars_per_s: float = 14.0
    comma_pause_frames: int = 2
    sentence_pause_frames: int = 4

    def __post_init__(self) -> None:
        if not 1.0 <= self.chars_per_s <= 100.0:
            raise ValueError(f"chars_per_s must be in [1, 100], got {self.chars_per_s}")
        if self.comma_pause_frames < 0 or self.sentence_pause_frames < 0:
            raise ValueError("pause frames must be >= 0")


@dataclass(frozen=True, slots=True)
class Word:
    """One word of forced text: its tokens and its frame budget.

    ``frames`` counts the word's whole slot: the ``EPAD`` before it, its tokens, and the
    ``PAD`` frames after it, so it is at least ``len(tokens) + 1``. ``max_pads`` is how
    many ``PAD`` frames may follow the tokens before the next word is forced to start.
    """

    text: str
    tokens: tuple[int, ...]
    frames: int

    @property
    def max_pads(self) -> int:
        return max(0, self.frames - len(self.tokens) - 1)


def words_of(text: str, tokenizer: Tokenizer, *, text_card: int, reserved: frozenset[int],
             pacing: Pacing) -> list[Word]:
    """Split ``text`` into words with tokens and frame budgets.

    Tokens the text stream cannot carry (ids at or over ``text_card``, and ``reserved``
    ids such as PAD and EPAD, which SentencePiece also returns for unknown characters)
    are dropped: forcing them would corrupt the layout. Raises ``ValueError`` when
    nothing sayable is left.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    words: list[Word] = []
    frames_per_char = FRAME_RATE_HZ / pacing.chars_per_s
    for raw in text.split():
        toks = tuple(t for t in tokenizer.encode(raw) if 0 <= t < text_card and t not in reserved)
        if not toks:
            continue
        budget = math.ceil((len(raw) + 1) * frames_per_char)
        if raw[-1] in ".?!":
            budget += pacing.sentence_pause_frames
        elif raw[-1] in ",;:":
            budget += pacing.comma_pause_frames
        words.append(Word(raw, toks, max(len(toks) + 1, budget)))
    if not words:
        raise ValueError(f"nothing to say in {text!r}: no token of it fits Moshi's text stream")
    return words


def timed_actions(words: list[Word], frames: int, *, start: int, end: int, pad: int,
                  epad: int) -> list[int]:
    """Forced text for a fixed span of ``frames`` (say-audio): ``PAD`` before ``start``,
    the words spread over ``[start, end)`` in proportion to their frame budgets (each slot
    still ``EPAD`` + tokens + ``PAD``), ``PAD`` after. When the words need more frames than
    the span, the list runs past ``frames`` (the text then finishes after the audio)."""
    if not 0 <= start <= end <= frames:
        raise ValueError(f"voiced span [{start}, {end}) not inside 0..{frames}")
    span = max(1, end - start)
    total = sum(w.frames for w in words)
    actions = [pad] * start
    used = 0.0
    for w in words:
        used += w.frames * span / total
        slot_end = start + round(used)
        need = len(w.tokens) + 1
        n = max(need, slot_end - len(actions))
        actions.append(epad)
        actions.extend(w.tokens)
        actions.extend([pad] * (n - need))
    if len(actions) < frames:
        actions.extend([pad] * (frames - len(actions)))
    return actions

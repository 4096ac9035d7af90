"""Agent text pieces -> word transcripts (the rules in voice_server_moshi.moshi.transcript)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_server_moshi.moshi.transcript import AgentWords


def texts(out: list) -> list[tuple[str, bool]]:  # type: ignore[type-arg]
    return [(t.text, t.final) for t in out]


def test_word_boundary_is_a_leading_space() -> None:
    w = AgentWords()
    assert texts(w.feed(" hel", 0)) == [("hel", False)]
    assert texts(w.feed("lo", 80)) == [("hello", False)]
    assert texts(w.feed(" there", 160)) == [("hello", True), ("there", False)]
    assert w.pending == "there"
    assert texts(w.flush()) == [("there", True)]
    assert w.flush() == []


def test_pause_closes_the_word_on_the_agent_clock() -> None:
    w = AgentWords(pause_ms=400)
    w.feed(" yes", 1000)
    assert w.advance(1399) == []
    assert texts(w.advance(1400)) == [("yes", True)]
    assert w.advance(5000) == []
    # Moshi resumed mid-word after the pause: the text is kept, as a new word.
    assert texts(w.feed("s", 5080)) == [("s", False)]


def test_punctuation_and_first_piece_without_space() -> None:
    w = AgentWords()
    out = w.feed("Hi", 0) + w.feed(",", 80) + w.feed(" you", 160) + w.feed("?", 240)
    out += w.flush()
    assert [t.text for t in out if t.final] == ["Hi,", "you?"]


def test_whitespace_pieces_only_close_words() -> None:
    w = AgentWords()
    out = w.feed(" a", 0) + w.feed(" ", 80) + w.feed(" ", 160) + w.feed("b ", 240)
    assert texts(out) == [("a", False), ("a", True), ("b", False), ("b", True)]
    assert w.pending == ""


def test_pause_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AgentWords(pause_ms=0)


@given(st.lists(st.text(alphabet=" abc,", max_size=6), max_size=30))
def test_finals_are_the_words_of_the_text(pieces: list[str]) -> None:
    w = AgentWords()
    out = []
    for i, piece in enumerate(pieces):
        out += w.feed(piece, i * 80.0)
    out += w.flush()
    finals = [t.text for t in out if t.final]
    assert finals == "".join(pieces).split()
    assert all(t.role == "agent" and t.text == t.text.strip() and t.text for t in out)

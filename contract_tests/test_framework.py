"""The suite's own machinery: normalization and the parity rules reject what they should."""

from __future__ import annotations

import pytest

from voice_server_moshi.capabilities import Capabilities
from voice_server_moshi.events import (
    AudioChunk,
    Connected,
    Disconnected,
    Error,
    Interruption,
    SpeechStarted,
    Transcript,
)
from voice_server_moshi.testing.contract import TELEPHONY, check_parity, normalize

CAPS = Capabilities(server_vad=True, interruption=False, agent_transcript=True)
FRAME = AudioChunk(audio=b"\xff" * 160, format=TELEPHONY)
START = Connected(session_id="s", capabilities=CAPS)
END = Disconnected(reason="client", close_code=1000)


def test_normalize_groups_agent_output() -> None:
    agent = Transcript(role="agent", text="hi", final=False)
    seq = [START, FRAME, agent, FRAME, SpeechStarted(t_ms=1, source="provider"),
           Error(code="x", message="m"), Error(code="x", message="m"), END]
    assert normalize(seq) == ["connected", "audio-chunk×2 ~ transcript(agent, partial)",
                              "speech-started(provider)", "error(x)×2",
                              "disconnected(client, 1000)"]


def test_parity_accepts_a_good_sequence() -> None:
    check_parity([START, FRAME, END], CAPS, TELEPHONY)


@pytest.mark.parametrize(
    ("events", "rule"),
    [
        ([FRAME, START, END], "first event"),
        ([START, FRAME], "exactly once"),
        ([START, END, FRAME], "last event"),
        ([START, AudioChunk(audio=b"\xff" * 100, format=TELEPHONY), END], "a frame is 160"),
        ([START, Interruption(), END], "interruption"),
        ([START, Transcript(role="caller", text="x"), END], "caller transcript"),
        ([START, SpeechStarted(t_ms=0, source="local-vad"), END], "capabilities say provider"),
        ([START, Error(code="x", message="m", fatal=True), FRAME, END], "fatal error"),
        ([START, SpeechStarted(t_ms=0, source="provider"),
          SpeechStarted(t_ms=1, source="provider"), END], "in a row"),
    ],
)
def test_parity_rejects(events: list, rule: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(AssertionError, match=rule):
        check_parity(events, CAPS, TELEPHONY)

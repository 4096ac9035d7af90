"""Caller-transcript kinds 0x50-0x53 on Kyutai's protocol: round trips and bad payloads."""

from __future__ import annotations

import pytest

from voice_server_moshi.moshi import caller_protocol as cp
from voice_server_moshi.moshi import protocol


def roundtrip(data: bytes) -> cp.CallerMessage | None:
    msg = protocol.decode(data)
    assert isinstance(msg, protocol.UnknownMessage)  # Kyutai's codec: an unknown kind
    return cp.parse(msg)


def test_round_trips() -> None:
    assert roundtrip(cp.encode_text(" héllo", 1840.04)) == cp.CallerTextMessage(" héllo", 1840.0)
    assert roundtrip(cp.encode_end_of_turn(0.93456, 2480)) == cp.CallerEndOfTurn(0.9346, 2480)
    assert roundtrip(cp.FLUSH_CALLER_BYTES) == cp.FlushCaller()
    assert roundtrip(cp.CALLER_FLUSHED_BYTES) == cp.CallerFlushedMessage()
    assert roundtrip(b"\x5f{}") is None  # reserved in the family, no meaning yet
    assert cp.parse(protocol.UnknownMessage(0x41, b"")) is None  # another family's kind


@pytest.mark.parametrize("data", [
    b"\x50", b"\x50not json", b"\x50\xff\xfe", b"\x50[1]", b'\x50{"text": 3, "t_ms": 1}',
    b'\x50{"text": "a"}', b'\x50{"text": "a", "t_ms": true}', b'\x50{"text": "a", "t_ms": NaN}',
    b'\x51{"p": "x", "t_ms": 1}', b"\x52x", b"\x53\x00",
])
def test_malformed_payloads_are_protocol_errors(data: bytes) -> None:
    msg = protocol.decode(data)
    assert isinstance(msg, protocol.UnknownMessage)
    with pytest.raises(protocol.MalformedMessageError):
        cp.parse(msg)


def test_advertised_only_by_an_explicit_true() -> None:
    assert cp.advertised({"caller_transcript": True})
    for meta in (None, {}, {"caller_transcript": "yes"}, [True], {"caller_transcript": 1}):
        assert not cp.advertised(meta)

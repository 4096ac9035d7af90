"""The steering messages' codec (0x40-0x42; docs/protocol.md)."""

from __future__ import annotations

import struct

import pytest

from voice_server_moshi.moshi import protocol
from voice_server_moshi.moshi.steering_protocol import (
    STEERING_KINDS,
    CancelMessage,
    SayAudioMessage,
    SteerUpdateMessage,
    decode_steering,
    encode_steering,
    request_id,
)


@pytest.mark.parametrize("msg", [
    SteerUpdateMessage("say-1", 1, "queued"),
    SteerUpdateMessage("say-7", 7, "failed", "nothing to say in '  '"),
    SayAudioMessage("hello there", b"\x01\x00\xff\x7f" * 10),
    SayAudioMessage("", b"\x00\x00"),
    CancelMessage(),
    CancelMessage(flush=False),
])
def test_round_trip(msg: object) -> None:
    data = encode_steering(msg)  # type: ignore[arg-type]
    assert data[0] in STEERING_KINDS
    # Kyutai's codec sees an unknown kind (clients skip it); ours decodes it.
    generic = protocol.decode(data)
    assert isinstance(generic, protocol.UnknownMessage)
    assert decode_steering(generic.kind, generic.payload) == msg


def test_ids_follow_the_request_sequence() -> None:
    assert request_id(1) == "say-1" and request_id(12) == "say-12"


@pytest.mark.parametrize(("data", "error", "match"), [
    (b"\x40not json", protocol.InvalidJsonError, "not UTF-8 JSON"),
    (b'\x40{"id": "say-1", "seq": 1, "status": "done"}', protocol.InvalidValueError, "status"),
    (b"\x41\x01\x00", protocol.TruncatedMessageError, "u32 header length"),
    (b"\x41" + struct.pack("<I", 50) + b"{}", protocol.TruncatedMessageError, "only 2 follow"),
    (b"\x41" + struct.pack("<I", 2) + b"{}" + b"\x00", protocol.MalformedMessageError,
     "whole 16-bit"),
    (b"\x41" + struct.pack("<I", 2) + b"{}", protocol.MalformedMessageError, "whole 16-bit"),
    (b"\x41" + struct.pack("<I", 21) + b'{"sample_rate":8000}' + b" \x00\x00",
     protocol.InvalidValueError, "24000"),
    (b'\x41' + struct.pack("<I", 10) + b'{"text":1}' + b"\x00\x00",
     protocol.InvalidValueError, "text"),
    (b'\x42{"flush": "yes"}', protocol.InvalidValueError, "flush"),
    (b"\x42\xff", protocol.InvalidJsonError, "cancel"),
])
def test_malformed_messages_raise_protocol_errors(data: bytes, error: type[Exception],
                                                  match: str) -> None:
    with pytest.raises(error, match=match) as exc:
        decode_steering(data[0], data[1:])
    assert isinstance(exc.value, protocol.ProtocolError)
    assert exc.value.kind == data[0]  # type: ignore[attr-defined]

"""Kyutai's wire protocol, with bytes only."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_server_moshi.moshi import protocol as p

# -- handshakes ------------------------------------------------------------------------


def test_python_server_handshake_is_one_byte() -> None:
    msg = p.decode(b"\x00")
    assert msg == p.Handshake()
    assert msg.protocol_version is None
    assert p.encode(msg) == b"\x00"


def test_rust_server_handshake_is_nine_bytes() -> None:
    data = b"\x00" + struct.pack("<II", 0, 7)
    msg = p.decode(data)
    assert msg == p.Handshake(protocol_version=0, model_version=7)
    assert p.encode(msg) == data
    # Little-endian: 0x01020304 is sent as 04 03 02 01.
    assert p.decode(b"\x00\x04\x03\x02\x01\x00\x00\x00\x00") == p.Handshake(0x01020304, 0)


@pytest.mark.parametrize("n", range(2, 9))
def test_truncated_handshake(n: int) -> None:
    with pytest.raises(p.TruncatedMessageError, match=f"handshake of {n} bytes"):
        p.decode(b"\x00" * n)


def test_overlong_handshake() -> None:
    with pytest.raises(p.MalformedMessageError, match="handshake of 10 bytes"):
        p.decode(b"\x00" * 10)


def test_handshake_versions_both_or_neither() -> None:
    with pytest.raises(ValueError):
        p.Handshake(protocol_version=0)


# -- every kind ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x01OggS\x00\x02", p.Audio(b"OggS\x00\x02")),
        (b"\x01", p.Audio(b"")),
        (b"\x02 hel", p.Text(" hel")),
        ("\x02 caf\u00e9".encode(), p.Text(" caf\u00e9")),
        (b"\x03\x00", p.Control(p.ControlAction.START)),
        (b"\x03\x01", p.Control(p.ControlAction.END_TURN)),
        (b"\x03\x02", p.Control(p.ControlAction.PAUSE)),
        (b"\x03\x03", p.Control(p.ControlAction.RESTART)),
        (b'\x04{"text_temperature":0.7,"instance_name":"a"}',
         p.Metadata({"text_temperature": 0.7, "instance_name": "a"})),
        (b"\x05model overloaded", p.ErrorMessage("model overloaded")),
        (b"\x06", p.Ping()),
        (b"\x07\x05 word", p.ColoredText(5, " word")),
        (b"\x08\x89PNG", p.Image(b"\x89PNG")),
        (b"\x09\x01\x02\x03", p.Codes(b"\x01\x02\x03")),
    ],
)
def test_every_kind_decodes_and_encodes_back(data: bytes, expected: p.Message) -> None:
    assert p.decode(data) == expected
    if isinstance(expected, p.Metadata):
        assert json.loads(p.encode(expected)[1:]) == expected.value
    else:
        assert p.encode(expected) == data


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert p.decode(bytearray(b"\x02 a")) == p.Text(" a")
    assert p.decode(memoryview(b"\x02 a")) == p.Text(" a")


@pytest.mark.parametrize("kind", [10, 11, 0x7F, 0xFF])
def test_unknown_kinds_are_reported_not_fatal(kind: int) -> None:
    msg = p.decode(bytes([kind]) + b"payload")
    assert msg == p.UnknownMessage(kind, b"payload")
    assert p.encode(msg) == bytes([kind]) + b"payload"


def test_unknown_message_rejects_known_kind() -> None:
    with pytest.raises(ValueError):
        p.UnknownMessage(2, b"")


# -- malformed -------------------------------------------------------------------------


def test_empty_message() -> None:
    with pytest.raises(p.EmptyMessageError, match="empty"):
        p.decode(b"")


@pytest.mark.parametrize(("kind", "what"), [(2, "text"), (5, "error"), (4, "metadata")])
def test_bad_utf8(kind: int, what: str) -> None:
    with pytest.raises(p.InvalidUtf8Error, match=f"{what} message") as info:
        p.decode(bytes([kind]) + b"ok\xff\xfe")
    assert info.value.kind == kind


def test_bad_utf8_in_colored_text() -> None:
    with pytest.raises(p.InvalidUtf8Error, match="coloured-text"):
        p.decode(b"\x07\x01\xc3")


def test_bad_json() -> None:
    with pytest.raises(p.InvalidJsonError, match="not JSON"):
        p.decode(b"\x04{not json")


def test_json_with_huge_int_is_a_protocol_error() -> None:
    with pytest.raises(p.InvalidJsonError):
        p.decode(b"\x04" + b"9" * 5000)


def test_control_payload_shape() -> None:
    with pytest.raises(p.TruncatedMessageError, match="control"):
        p.decode(b"\x03")
    with pytest.raises(p.MalformedMessageError, match="control"):
        p.decode(b"\x03\x00\x00")
    with pytest.raises(p.InvalidValueError, match="control action 9"):
        p.decode(b"\x03\x09")


def test_ping_with_payload() -> None:
    with pytest.raises(p.MalformedMessageError, match="ping"):
        p.decode(b"\x06x")


def test_colored_text_without_colour() -> None:
    with pytest.raises(p.TruncatedMessageError, match="colour byte"):
        p.decode(b"\x07")


def test_oversized_message() -> None:
    p.decode(b"\x01" + b"x" * 99, max_size=100)  # exactly at the limit: fine
    with pytest.raises(p.OversizedMessageError, match="101 bytes, over the limit of 100") as info:
        p.decode(b"\x01" + b"x" * 100, max_size=100)
    assert info.value.kind == 1


def test_default_limit_applies() -> None:
    with pytest.raises(p.OversizedMessageError):
        p.decode(b"\x01" + bytes(p.DEFAULT_MAX_MESSAGE_BYTES))


def test_protocol_errors_are_value_errors_of_the_package() -> None:
    from voice_server_moshi.errors import VoiceServerMoshiError

    assert issubclass(p.ProtocolError, ValueError)
    assert issubclass(p.ProtocolError, VoiceServerMoshiError)


# -- properties ------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_decoder_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(data, max_size=48)


@given(st.integers(0, 255), st.binary(max_size=32))
def test_decoder_on_every_kind_byte(kind: int, payload: bytes) -> None:
    try:
        msg = p.decode(bytes([kind]) + payload)
    except p.ProtocolError as exc:
        assert exc.kind == kind
    else:
        # Whatever decodes re-encodes to the same bytes (metadata: the same JSON value).
        if not isinstance(msg, p.Metadata):
            assert p.encode(msg) == bytes([kind]) + payload


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10,
)

messages = st.one_of(
    st.just(p.Handshake()),
    st.builds(p.Handshake, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(p.Audio, st.binary(max_size=64)),
    st.builds(p.Text, st.text(max_size=32)),
    st.builds(p.Control, st.sampled_from(list(p.ControlAction))),
    st.builds(p.Metadata, _json),
    st.builds(p.ErrorMessage, st.text(max_size=32)),
    st.just(p.Ping()),
    st.builds(p.ColoredText, st.integers(0, 255), st.text(max_size=32)),
    st.builds(p.Image, st.binary(max_size=64)),
    st.builds(p.Codes, st.binary(max_size=64)),
    st.builds(p.UnknownMessage, st.integers(10, 255), st.binary(max_size=32)),
)


@given(messages)
def test_encode_decode_round_trip(msg: p.Message) -> None:
    assert p.decode(p.encode(msg)) == msg

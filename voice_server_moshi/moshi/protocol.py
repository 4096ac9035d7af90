"""Kyutai's Moshi WebSocket protocol, sans I/O: bytes in, typed messages out, and back.

Every WebSocket binary message is one kind byte followed by a payload (see
``kyutai-labs/moshi:rust/protocol.md``; summary in the project's reference notes):

===== ============ ==============================================================
byte  message      payload
===== ============ ==============================================================
0x00  Handshake    none (Python ``moshi.server``) or u32 LE protocol version +
                   u32 LE model version (Rust servers): 1 or 9 bytes in all
0x01  Audio        Ogg pages of Opus, 24 kHz mono
0x02  Text         UTF-8, one piece of the inner monologue (e.g. ``" hel"``)
0x03  Control      one byte: Start=0, EndTurn=1, Pause=2, Restart=3
0x04  Metadata     UTF-8 JSON
0x05  Error        UTF-8 text
0x06  Ping         none
0x07  ColoredText  one colour byte, then UTF-8 text
0x08  Image        opaque bytes (MoshiVis era)
0x09  Codes        opaque bytes (raw codes of Kyutai's Rust ``moshi-server``)
===== ============ ==============================================================

:func:`decode` never raises anything but :class:`ProtocolError` (a subclass naming what was
wrong); a kind byte it does not know gives :class:`UnknownMessage`, which callers log and
skip, as ``protocol.md`` asks.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ..errors import VoiceServerMoshiError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Audio",
    "Codes",
    "ColoredText",
    "Control",
    "ControlAction",
    "EmptyMessageError",
    "ErrorMessage",
    "Handshake",
    "Image",
    "InvalidJsonError",
    "InvalidUtf8Error",
    "InvalidValueError",
    "Kind",
    "MalformedMessageError",
    "Message",
    "Metadata",
    "OversizedMessageError",
    "Ping",
    "ProtocolError",
    "Text",
    "TruncatedMessageError",
    "UnknownMessage",
    "decode",
    "encode",
]

#: Largest message :func:`decode` accepts by default. An 80 ms Ogg/Opus page is a few
#: hundred bytes; 1 MiB leaves room for metadata and images while bounding memory.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20


class Kind(IntEnum):
    """The leading byte of every message."""

    HANDSHAKE = 0
    AUDIO = 1
    TEXT = 2
    CONTROL = 3
    METADATA = 4
    ERROR = 5
    PING = 6
    COLORED_TEXT = 7
    IMAGE = 8
    CODES = 9


class ControlAction(IntEnum):
    """Payload of a control message (no Kyutai server acts on them in streaming mode)."""

    START = 0
    END_TURN = 1
    PAUSE = 2
    RESTART = 3


# -- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    """Session ready. Versions are None for the Python server's 1-byte form."""

    protocol_version: int | None = None
    model_version: int | None = None

    def __post_init__(self) -> None:
        if (self.protocol_version is None) != (self.model_version is None):
            raise ValueError("handshake versions are both set (9-byte form) or both None")
        for v in (self.protocol_version, self.model_version):
            if v is not None and not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"handshake version {v} does not fit a u32")


@dataclass(frozen=True, slots=True)
class Audio:
    """Ogg/Opus bytes (one or more pages, or a part of a stream)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Control:
    action: ControlAction


@dataclass(frozen=True, slots=True)
class Metadata:
    """Decoded JSON (the Rust backend sends an object: sampling parameters, build info)."""

    value: Any


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    message: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class ColoredText:
    color: int
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.color <= 255:
            raise ValueError(f"colour {self.color} does not fit a byte")


@dataclass(frozen=True, slots=True)
class Image:
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Codes:
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A kind byte this codec does not know: report it, skip it, never fail on it."""

    kind: int
    payload: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.kind <= 255 or self.kind in _KNOWN_KINDS:
            raise ValueError(f"kind {self.kind} is not an unknown kind byte")


Message = (
    Handshake
    | Audio
    | Text
    | Control
    | Metadata
    | ErrorMessage
    | Ping
    | ColoredText
    | Image
    | Codes
    | UnknownMessage
)

_KNOWN_KINDS = frozenset(int(k) for k in Kind)


# -- errors ----------------------------------------------------------------------------


class ProtocolError(VoiceServerMoshiError, ValueError):
    """A message that does not follow the protocol. ``kind`` is its kind byte if it had one."""

    def __init__(self, message: str, *, kind: int | None = None) -> None:
        self.kind = kind
        super().__init__(message)


class EmptyMessageError(ProtocolError):
    """A message of zero bytes (not even a kind byte)."""


class TruncatedMessageError(ProtocolError):
    """A message shorter than its kind requires (e.g. a 5-byte handshake)."""


class MalformedMessageError(ProtocolError):
    """A message longer than its kind allows, or otherwise mis-shaped."""


class InvalidUtf8Error(ProtocolError):
    """A text, error, metadata or coloured-text payload that is not UTF-8."""


class InvalidJsonError(ProtocolError):
    """A metadata payload that is not JSON."""


class InvalidValueError(ProtocolError):
    """A field value outside its range (e.g. control action 7)."""


class OversizedMessageError(ProtocolError):
    """A message larger than the configured limit."""


# -- codec -----------------------------------------------------------------------------

_U32X2 = struct.Struct("<II")


def _utf8(payload: bytes, kind: int, what: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUtf8Error(
            f"{what} message (kind 0x{kind:02x}) is not valid UTF-8: {exc.reason} at byte "
            f"{exc.start + 1} of the message",
            kind=kind,
        ) from None


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode one WebSocket binary message. Raises only :class:`ProtocolError` subclasses."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessageError(f"a message is bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise EmptyMessageError("empty message: no kind byte")
    kind = data[0]
    if len(data) > max_size:
        raise OversizedMessageError(
            f"message of kind 0x{kind:02x} is {len(data)} bytes, over the limit of "
            f"{max_size} bytes; skipped",
            kind=kind,
        )
    payload = data[1:]
    if kind == Kind.HANDSHAKE:
        if not payload:
            return Handshake()
        if len(payload) < _U32X2.size:
            raise TruncatedMessageError(
                f"handshake of {len(data)} bytes: expected 1 (Python server) or 9 (kind byte, "
                "u32 LE protocol version, u32 LE model version)",
                kind=kind,
            )
        if len(payload) > _U32X2.size:
            raise MalformedMessageError(
                f"handshake of {len(data)} bytes: expected 1 or 9", kind=kind
            )
        proto, model = _U32X2.unpack(payload)
        return Handshake(proto, model)
    if kind == Kind.AUDIO:
        return Audio(payload)
    if kind == Kind.TEXT:
        return Text(_utf8(payload, kind, "text"))
    if kind == Kind.CONTROL:
        if len(payload) != 1:
            cls = TruncatedMessageError if not payload else MalformedMessageError
            raise cls(
                f"control message with a {len(payload)}-byte payload; expected exactly 1 byte",
                kind=kind,
            )
        try:
            action = ControlAction(payload[0])
        except ValueError:
            raise InvalidValueError(
                f"control action {payload[0]} unknown; expected 0 (start), 1 (end turn), "
                "2 (pause) or 3 (restart)",
                kind=kind,
            ) from None
        return Control(action)
    if kind == Kind.METADATA:
        text = _utf8(payload, kind, "metadata")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, huge ints
            raise InvalidJsonError(f"metadata message is not JSON: {exc}", kind=kind) from None
        return Metadata(value)
    if kind == Kind.ERROR:
        return ErrorMessage(_utf8(payload, kind, "error"))
    if kind == Kind.PING:
        if payload:
            raise MalformedMessageError(
                f"ping message with a {len(payload)}-byte payload; a ping has none", kind=kind
            )
        return Ping()
    if kind == Kind.COLORED_TEXT:
        if not payload:
            raise TruncatedMessageError(
                "coloured-text message without its colour byte", kind=kind
            )
        return ColoredText(payload[0], _utf8(payload[1:], kind, "coloured-text"))
    if kind == Kind.IMAGE:
        return Image(payload)
    if kind == Kind.CODES:
        return Codes(payload)
    return UnknownMessage(kind, payload)


def encode(message: Message) -> bytes:
    """Encode one message as the bytes of a WebSocket binary message."""
    match message:
        case Handshake(protocol_version=None):
            return b"\x00"
        case Handshake(protocol_version=int(p), model_version=int(m)):
            return b"\x00" + _U32X2.pack(p, m)
        case Audio(data=d):
            return b"\x01" + d
        case Text(text=t):
            return b"\x02" + t.encode("utf-8")
        case Control(action=a):
            return bytes((Kind.CONTROL, int(a)))
        case Metadata(value=v):
            return b"\x04" + json.dumps(v, separators=(",", ":")).encode("utf-8")
        case ErrorMessage(message=t):
            return b"\x05" + t.encode("utf-8")
        case Ping():
            return b"\x06"
        case ColoredText(color=c, text=t):
            return bytes((Kind.COLORED_TEXT, c)) + t.encode("utf-8")
        case Image(data=d):
            return b"\x08" + d
        case Codes(data=d):
            return b"\x09" + d
        case UnknownMessage(kind=k, payload=p):
            return bytes((k,)) + p
    raise TypeError(f"not a Moshi protocol message: {message!r}")

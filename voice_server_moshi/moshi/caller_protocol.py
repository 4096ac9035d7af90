"""Caller-transcript messages on Kyutai's protocol (kinds 0x50-0x5F; docs/protocol.md).

Kyutai's servers send none of these and Kyutai's clients ignore unknown kinds, so they ride
on ``/api/chat`` without breaking either side. Sans-I/O: :func:`install_client` and
:func:`install_server` register the kinds on a Kyutai session (its ``register_kind``
extension point), which then reports them as the events below.

====  ======================  ==========  ============================================
kind  name                    direction   payload
====  ======================  ==========  ============================================
0x50  caller text             server ->   UTF-8 JSON ``{"text": " hel", "t_ms": 1840.0}``
0x51  caller end of turn      server ->   UTF-8 JSON ``{"p": 0.93, "t_ms": 2480.0}``
0x52  flush caller            client ->   none: "my audio has ended, send the last words"
0x53  caller flushed          server ->   none: every caller text has been sent
====  ======================  ==========  ============================================

``t_ms`` is caller stream time (80 ms per frame the server received) when the piece came
out; the audio it transcribes is the STT's delay earlier. A server that sends them says
``"caller_transcript": true`` in its ``0x04`` metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import MalformedMessageError, UnknownMessage
from .session import ClientSession, ServerSession, SessionEvent

CALLER_TEXT = 0x50
CALLER_END_OF_TURN = 0x51
FLUSH_CALLER = 0x52
CALLER_FLUSHED = 0x53
#: The metadata key a server sets when it sends caller transcripts.
METADATA_KEY = "caller_transcript"

FLUSH_CALLER_BYTES = bytes((FLUSH_CALLER,))
CALLER_FLUSHED_BYTES = bytes((CALLER_FLUSHED,))


@dataclass(frozen=True, slots=True)
class CallerTextMessage(SessionEvent):
    text: str
    t_ms: float


@dataclass(frozen=True, slots=True)
class CallerEndOfTurn(SessionEvent):
    p: float
    t_ms: float


@dataclass(frozen=True, slots=True)
class FlushCaller(SessionEvent):
    pass


@dataclass(frozen=True, slots=True)
class CallerFlushedMessage(SessionEvent):
    pass


CallerMessage = CallerTextMessage | CallerEndOfTurn | FlushCaller | CallerFlushedMessage


def encode_text(text: str, t_ms: float) -> bytes:
    return bytes((CALLER_TEXT,)) + json.dumps(
        {"text": text, "t_ms": round(t_ms, 1)}, separators=(",", ":")).encode("utf-8")


def encode_end_of_turn(p: float, t_ms: float) -> bytes:
    return bytes((CALLER_END_OF_TURN,)) + json.dumps(
        {"p": round(p, 4), "t_ms": round(t_ms, 1)}, separators=(",", ":")).encode("utf-8")


def _number(obj: dict[str, object], key: str, kind: int) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise MalformedMessageError(f"0x{kind:02x} message needs a finite number {key!r}",
                                    kind=kind)
    return float(v)


def _json(payload: bytes, kind: int) -> dict[str, object]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedMessageError(f"0x{kind:02x} message is not UTF-8 JSON: {exc}",
                                    kind=kind) from None
    if not isinstance(obj, dict):
        raise MalformedMessageError(f"0x{kind:02x} message is not a JSON object", kind=kind)
    return obj


def parse(msg: UnknownMessage) -> CallerMessage | None:
    """The caller-transcript meaning of an unknown-kind message; None for kinds outside
    this family. Raises :class:`~.protocol.MalformedMessageError` for a bad payload."""
    return parse_payload(msg.kind, msg.payload)


def parse_payload(k: int, payload: bytes) -> CallerMessage | None:
    """:func:`parse` on a kind byte and the bytes after it."""
    if k == CALLER_TEXT:
        obj = _json(payload, k)
        text = obj.get("text")
        if not isinstance(text, str):
            raise MalformedMessageError("0x50 message needs a string 'text'", kind=k)
        return CallerTextMessage(text, _number(obj, "t_ms", k))
    if k == CALLER_END_OF_TURN:
        obj = _json(payload, k)
        return CallerEndOfTurn(_number(obj, "p", k), _number(obj, "t_ms", k))
    if k in (FLUSH_CALLER, CALLER_FLUSHED):
        if payload:
            raise MalformedMessageError(f"0x{k:02x} message carries no payload", kind=k)
        return FlushCaller() if k == FLUSH_CALLER else CallerFlushedMessage()
    return None


def advertised(metadata: object) -> bool:
    """Whether a ``0x04`` metadata value says the server sends caller transcripts."""
    return isinstance(metadata, dict) and metadata.get(METADATA_KEY) is True


def _handler(kind: int) -> Callable[[bytes], list[SessionEvent]]:
    def handle(payload: bytes) -> list[SessionEvent]:
        msg = parse_payload(kind, payload)
        return [] if msg is None else [msg]

    return handle


def install_client(session: ClientSession) -> None:
    """Report 0x50, 0x51 and 0x53 from the server as :class:`CallerTextMessage`,
    :class:`CallerEndOfTurn` and :class:`CallerFlushedMessage` events."""
    for kind in (CALLER_TEXT, CALLER_END_OF_TURN, CALLER_FLUSHED):
        session.register_kind(kind, _handler(kind))


def install_server(session: ServerSession) -> None:
    """Report a client's 0x52 as a :class:`FlushCaller` event."""
    session.register_kind(FLUSH_CALLER, _handler(FLUSH_CALLER))

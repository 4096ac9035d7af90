"""Steering messages on Kyutai's WebSocket protocol, sans I/O (docs/protocol.md, ADR 0070).

Kyutai's kinds stop at 0x09; this project's ``serve`` adds steering in 0x40-0x4F and
advertises it with ``"steering": true`` in its ``0x04`` metadata. Kyutai's clients never
send these and ignore unknown kinds, so they are unaffected.

===== ========== ================= =====================================================
byte  direction  message           payload
===== ========== ================= =====================================================
0x02  c -> s     say text          UTF-8 text for the agent to say (Kyutai's text kind,
                                   which its servers only ever send)
0x40  s -> c     steering update   UTF-8 JSON ``{"id", "seq", "status", "message"?}``;
                                   status: queued, started, finished, cancelled, failed
0x41  c -> s     say audio         u32 LE header length, JSON header ``{"text",
                                   "sample_rate": 24000}``, then 16-bit LE mono PCM
0x42  c -> s     cancel            empty (cancel and flush the queue) or JSON
                                   ``{"flush": bool}``
===== ========== ================= =====================================================

Each say request (``0x02`` or ``0x41``) takes the next sequence number of its connection,
from 1, accepted or refused (a malformed one, answered with ``0x05``, takes none), and is
answered by ``0x40`` updates with ``"id": "say-<seq>"``:
a client knows each request's id without waiting for an answer.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ..audio.moshi_frame import SAMPLE_RATE
from .protocol import (
    InvalidJsonError,
    InvalidValueError,
    MalformedMessageError,
    TruncatedMessageError,
)

STEER_UPDATE = 0x40
SAY_AUDIO = 0x41
CANCEL = 0x42
#: The kinds this module owns (the 0x40-0x4F block is the project's steering range).
STEERING_KINDS = frozenset((STEER_UPDATE, SAY_AUDIO, CANCEL))
#: The metadata key a server sets to say it takes these messages.
METADATA_KEY = "steering"

UpdateStatus = Literal["queued", "started", "finished", "cancelled", "failed"]
_STATUSES = frozenset(get_args(UpdateStatus))
_U32 = struct.Struct("<I")


def request_id(seq: int) -> str:
    """The id of a connection's ``seq``-th say request (from 1)."""
    return f"say-{seq}"


@dataclass(frozen=True, slots=True)
class SteerUpdateMessage:
    request_id: str
    seq: int
    status: UpdateStatus
    message: str = ""


@dataclass(frozen=True, slots=True)
class SayAudioMessage:
    text: str
    pcm: bytes = field(repr=False)  # 16-bit LE mono at SAMPLE_RATE
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class CancelMessage:
    flush: bool = True


SteeringMessage = SteerUpdateMessage | SayAudioMessage | CancelMessage


def _json(payload: bytes, kind: int, what: str) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJsonError(f"{what} (kind 0x{kind:02x}) is not UTF-8 JSON: {exc}",
                               kind=kind) from None


def decode_steering(kind: int, payload: bytes) -> SteeringMessage:
    """Decode one steering message (``kind`` in :data:`STEERING_KINDS`). Raises only
    :class:`~.protocol.ProtocolError` subclasses."""
    if kind == STEER_UPDATE:
        obj = _json(payload, kind, "steering update")
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) \
                or not isinstance(obj.get("seq"), int) or obj.get("status") not in _STATUSES:
            raise InvalidValueError(
                "steering update needs {\"id\": str, \"seq\": int, \"status\": one of "
                f"{sorted(_STATUSES)}}}, got {obj!r}"[:300], kind=kind)
        return SteerUpdateMessage(obj["id"], obj["seq"], obj["status"],
                                  str(obj.get("message", "")))
    if kind == SAY_AUDIO:
        if len(payload) < _U32.size:
            raise TruncatedMessageError("say-audio (kind 0x41) without its u32 header length",
                                        kind=kind)
        (n,) = _U32.unpack_from(payload)
        if n > len(payload) - _U32.size:
            raise TruncatedMessageError(
                f"say-audio (kind 0x41) header of {n} bytes, but only "
                f"{len(payload) - _U32.size} follow",
                kind=kind)
        head = _json(payload[_U32.size:_U32.size + n], kind, "say-audio header")
        pcm = payload[_U32.size + n:]
        if not isinstance(head, dict) or not isinstance(head.get("text", ""), str):
            raise InvalidValueError("say-audio header must be {\"text\": str, "
                                    "\"sample_rate\": 24000}", kind=kind)
        rate = head.get("sample_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise InvalidValueError(
                f"say-audio (kind 0x41) sample_rate must be {SAMPLE_RATE}, got {rate!r}",
                kind=kind)
        if not pcm or len(pcm) % 2:
            raise MalformedMessageError(
                f"say-audio (kind 0x41) PCM must be whole 16-bit samples, got {len(pcm)} "
                "bytes", kind=kind)
        return SayAudioMessage(head.get("text", ""), pcm)
    if kind == CANCEL:
        if not payload:
            return CancelMessage()
        obj = _json(payload, kind, "cancel")
        if not isinstance(obj, dict) or not isinstance(obj.get("flush", True), bool):
            raise InvalidValueError("cancel payload must be empty or {\"flush\": bool}",
                                    kind=kind)
        return CancelMessage(obj.get("flush", True))
    raise ValueError(f"kind 0x{kind:02x} is not a steering kind")


def encode_steering(message: SteeringMessage) -> bytes:
    """One steering message as the bytes of a WebSocket binary message."""
    match message:
        case SteerUpdateMessage(request_id=rid, seq=seq, status=status, message=msg):
            obj: dict[str, Any] = {"id": rid, "seq": seq, "status": status}
            if msg:
                obj["message"] = msg
            return bytes((STEER_UPDATE,)) + json.dumps(obj, separators=(",", ":")).encode()
        case SayAudioMessage(text=text, pcm=pcm, sample_rate=rate):
            head = json.dumps({"text": text, "sample_rate": rate},
                              separators=(",", ":")).encode()
            return bytes((SAY_AUDIO,)) + _U32.pack(len(head)) + head + pcm
        case CancelMessage(flush=flush):
            return bytes((CANCEL,)) + (b"" if flush else b'{"flush":false}')
    raise TypeError(f"not a steering message: {message!r}")

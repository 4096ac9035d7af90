"""The data plane between a front door and an engine in another process or replica,
sans I/O: version 1 (ADR 0110, docs/protocol.md "Data plane").

The front door speaks Kyutai's protocol (Ogg/Opus) with the caller and sends the engine
decoded PCM and the caller's requests; the engine sends back each 80 ms output (PCM, its
text piece, steering progress) and everything else the engine says about the call. So
Opus, the protocol and the caller's WebSocket cost CPU where the front door runs, never on
the engine's tick thread (ADR 0095).

One WebSocket message per item. The first two are text (JSON): the front door's hello
``{"v": 1, "call_id": ..., "wait_s": ..., "params": {...}}`` (take a slot now) or
``{"v": 1, "ticket": ...}`` (a slot a lease reserved), and the engine's answer
``{"v": 1, "grant": {...}}`` or a binary ``0x15`` error ("server busy: ...") and a close.
Then binary messages, a kind byte first:

====== ============ ========================================================================
kind   direction    payload
====== ============ ========================================================================
0x01   door->engine one caller frame: 1920 float32 LE samples (24 kHz, 80 ms)
0x02   door->engine say text: JSON ``{"id", "text"}``
0x03   door->engine say audio: u32 LE JSON length, JSON ``{"id", "text"}``, int16 LE PCM
0x04   door->engine cancel saying: JSON ``{"flush"}``
0x05   door->engine the caller's audio ended: flush the caller transcript (no payload)
0x11   engine->door output: u32 step, i32 text token, u16 text length, u16 marks length,
                    text UTF-8, marks JSON ``[[id, status], ...]``, 1920 float32 LE samples
0x12   engine->door caller transcript step: JSON ``{"step", "text", "token",
                    "end_of_turn", "delay_ms", "final"}``
0x13   engine->door answer to a say request: JSON ``{"id", "status", "message"}``
0x14   engine->door reserved: progress of a call's set-up (persona prompts)
0x15   engine->door the engine failed the call: UTF-8 reason (the call is over); in
                    answer to a hello, ``"server busy: ..."`` (no slot) or
                    ``"persona: ..."`` (a persona or voice the model cannot take)
====== ============ ========================================================================

Anything else, or a message of the wrong size, is refused with a :class:`WireError` that
says what was expected; the engine answers it with ``0x15`` and closes 1007.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from ..audio.moshi_frame import FRAME_SAMPLES
from ..engine.slot import SlotError, SlotOutput, SttOutput
from ..engine.steering import SteerEvent
from ..errors import VoiceServerMoshiError
from .kinds import (
    PCM,
    CallEvent,
    CallParams,
    CallRequest,
    CancelSay,
    FinishCaller,
    Grant,
    SayAudio,
    SayText,
    SteerAnswer,
)

__all__ = [
    "VERSION", "Hello", "WireError", "decode_event", "decode_grant", "decode_hello",
    "decode_request", "encode_event", "encode_frame", "encode_grant", "encode_hello",
    "encode_request",
]

VERSION: Final = 1
FRAME: Final = 0x01
SAY_TEXT: Final = 0x02
SAY_AUDIO: Final = 0x03
CANCEL: Final = 0x04
FINISH_CALLER: Final = 0x05
OUTPUT: Final = 0x11
CALLER_TEXT: Final = 0x12
STEER_ANSWER: Final = 0x13
PROGRESS: Final = 0x14  # reserved (persona prompts)
#: The ``0x15`` answer to a hello whose persona or voice the engine refused (ADR 0130).
PERSONA_REFUSED: Final = "persona: "
ERROR: Final = 0x15
_PCM_BYTES: Final = FRAME_SAMPLES * 4
_OUT_HEAD = struct.Struct("<BIiHH")
_U32 = struct.Struct("<I")
_MARKS = frozenset({"started", "finished", "cancelled"})


class WireError(VoiceServerMoshiError, ValueError):
    """A data-plane message that is not what this module writes."""


# -- hello and grant (text) ------------------------------------------------------------------


class Hello:
    """A front door's first message: take a slot (``call_id``) or claim one (``ticket``)."""

    __slots__ = ("call_id", "params", "ticket", "wait_s")

    def __init__(self, *, call_id: str | None = None, ticket: str | None = None,
                 wait_s: float = 0.0, params: CallParams | None = None) -> None:
        if (call_id is None) == (ticket is None):
            raise WireError("a hello names a call_id or a ticket, not both")
        self.call_id, self.ticket = call_id, ticket
        self.wait_s = min(60.0, max(0.0, float(wait_s)))
        self.params = params or CallParams()


def encode_hello(hello: Hello) -> str:
    body: dict[str, Any] = {"v": VERSION}
    if hello.ticket is not None:
        body["ticket"] = hello.ticket
    else:
        body.update(call_id=hello.call_id, wait_s=hello.wait_s, params=hello.params.as_dict())
    return json.dumps(body)


def _json_object(data: str | bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, 4300+ digits, deep
        raise WireError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what} must be a JSON object")
    return obj


def _check_version(obj: Mapping[str, Any], what: str) -> None:
    if obj.get("v") != VERSION:
        raise WireError(f"{what} of data-plane version {obj.get('v')!r}; this side speaks "
                        f"version {VERSION}")


def decode_hello(data: str | bytes) -> Hello:
    obj = _json_object(data, "hello")
    _check_version(obj, "hello")
    try:
        if "ticket" in obj:
            return Hello(ticket=str(obj["ticket"]))
        return Hello(call_id=str(obj["call_id"]), wait_s=float(obj.get("wait_s", 0)),
                     params=CallParams.from_dict(obj.get("params") or {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"bad hello: expected {{\"v\", \"ticket\"}} or {{\"v\", \"call_id\", "
                        f"\"wait_s\", \"params\"}} ({exc})") from None


def encode_grant(grant: Grant) -> str:
    return json.dumps({"v": VERSION, "grant": grant.as_dict()})


def decode_grant(data: str | bytes) -> Grant:
    obj = _json_object(data, "grant")
    _check_version(obj, "grant")
    try:
        return Grant.from_dict(obj["grant"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"bad grant: {exc}") from None


# -- front door -> engine ---------------------------------------------------------------------


def encode_frame(pcm: PCM) -> bytes:
    if pcm.shape != (FRAME_SAMPLES,):
        raise WireError(f"a frame is {FRAME_SAMPLES} samples, got shape {pcm.shape}")
    return bytes((FRAME,)) + pcm.astype("<f4", copy=False).tobytes()


def encode_request(req: CallRequest) -> bytes:
    if isinstance(req, SayText):
        return bytes((SAY_TEXT,)) + json.dumps({"id": req.request_id, "text": req.text}).encode()
    if isinstance(req, SayAudio):
        head = json.dumps({"id": req.request_id, "text": req.text}).encode()
        return bytes((SAY_AUDIO,)) + _U32.pack(len(head)) + head + req.pcm16
    if isinstance(req, CancelSay):
        return bytes((CANCEL,)) + json.dumps({"flush": req.flush}).encode()
    return bytes((FINISH_CALLER,))


def _kind(data: bytes) -> int:
    if not data:
        raise WireError("empty message")
    return data[0]


def decode_request(data: bytes) -> PCM | CallRequest:
    """A front door's binary message: a caller frame or a request."""
    k = _kind(data)
    try:
        if k == FRAME:
            if len(data) != 1 + _PCM_BYTES:
                raise WireError(f"a 0x01 frame is {1 + _PCM_BYTES} bytes, got {len(data)}")
            return np.frombuffer(data, dtype="<f4", offset=1).astype(np.float32)
        if k == SAY_TEXT:
            obj = _json_object(data[1:], "say text (0x02)")
            return SayText(str(obj["id"]), str(obj["text"]))
        if k == SAY_AUDIO:
            if len(data) < 5:
                raise WireError("say audio (0x03) shorter than its JSON length")
            (n,) = _U32.unpack_from(data, 1)
            obj = _json_object(data[5:5 + n], "say audio (0x03)")
            pcm16 = data[5 + n:]
            if len(data) < 5 + n or len(pcm16) % 2:
                raise WireError("say audio (0x03): truncated JSON or odd PCM byte count")
            return SayAudio(str(obj["id"]), str(obj.get("text", "")), pcm16)
        if k == CANCEL:
            return CancelSay(bool(_json_object(data[1:], "cancel (0x04)").get("flush", True)))
        if k == FINISH_CALLER:
            return FinishCaller()
    except (KeyError, TypeError, AttributeError) as exc:  # found by test_wire_fuzz.py
        raise WireError(f"kind 0x{k:02x}: missing or mistyped {exc}") from None
    raise WireError(f"unknown front-door message kind 0x{k:02x} (data-plane version "
                    f"{VERSION}: 0x01-0x05)")


# -- engine -> front door ---------------------------------------------------------------------


def encode_event(ev: CallEvent) -> bytes:
    if isinstance(ev, SlotOutput):
        text = (ev.text or "").encode("utf-8")
        marks = (json.dumps([[m.request_id, m.status] for m in ev.steering]).encode()
                 if ev.steering else b"")
        if len(text) > 0xFFFF or len(marks) > 0xFFFF:
            raise WireError("text piece or steering marks too long")
        return (_OUT_HEAD.pack(OUTPUT, ev.step, ev.text_token, len(text), len(marks)) + text
                + marks + ev.pcm.astype("<f4", copy=False).tobytes())
    if isinstance(ev, SttOutput):
        return bytes((CALLER_TEXT,)) + json.dumps({
            "step": ev.step, "text": ev.text, "token": ev.token, "end_of_turn": ev.end_of_turn,
            "delay_ms": ev.delay_ms, "final": ev.final}).encode()
    if isinstance(ev, SteerAnswer):
        return bytes((STEER_ANSWER,)) + json.dumps(
            {"id": ev.request_id, "status": ev.status, "message": ev.message}).encode()
    if isinstance(ev, SlotError):
        return bytes((ERROR,)) + ev.message.encode("utf-8")
    raise WireError(f"{type(ev).__name__} does not travel on the data plane")


def decode_event(data: bytes) -> CallEvent:
    """An engine's binary message."""
    k = _kind(data)
    try:
        if k == OUTPUT:
            return _decode_output(data)
        if k == CALLER_TEXT:
            o = _json_object(data[1:], "caller transcript (0x12)")
            eot = o.get("end_of_turn")
            return SttOutput(int(o["step"]), o.get("text"), int(o["token"]),
                             None if eot is None else float(eot), float(o.get("delay_ms", 0)),
                             bool(o.get("final", False)))
        if k == STEER_ANSWER:
            o = _json_object(data[1:], "steering answer (0x13)")
            status = o["status"]
            if status not in ("queued", "failed"):
                raise WireError(f"steering answer status {status!r}")
            return SteerAnswer(str(o["id"]), status, str(o.get("message", "")))
        if k == ERROR:
            return SlotError(data[1:].decode("utf-8", errors="replace"))
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"kind 0x{k:02x}: {exc}") from None
    raise WireError(f"unknown engine message kind 0x{k:02x} (data-plane version {VERSION}: "
                    "0x11-0x15)")


def _decode_output(data: bytes) -> SlotOutput:
    if len(data) < _OUT_HEAD.size:
        raise WireError(f"truncated output (0x11) of {len(data)} bytes")
    _, step, token, n_text, n_marks = _OUT_HEAD.unpack_from(data)
    start = _OUT_HEAD.size + n_text + n_marks
    if len(data) != start + _PCM_BYTES:
        raise WireError(f"output (0x11) of {len(data)} bytes, expected {start + _PCM_BYTES}")
    text = data[_OUT_HEAD.size:_OUT_HEAD.size + n_text].decode("utf-8") if n_text else None
    marks: tuple[SteerEvent, ...] = ()
    if n_marks:
        raw = json.loads(data[_OUT_HEAD.size + n_text:start])
        if not all(status in _MARKS for _, status in raw):
            raise WireError(f"output (0x11) steering marks {raw!r}")
        marks = tuple(SteerEvent(str(rid), status) for rid, status in raw)
    pcm = np.frombuffer(data, dtype="<f4", offset=start).astype(np.float32)
    return SlotOutput(step=step, pcm=pcm, text_token=token, text=text, steering=marks)

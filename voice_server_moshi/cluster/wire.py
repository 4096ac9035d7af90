"""The data plane between an ingress and an engine replica, sans I/O.

The ingress speaks Kyutai's protocol (Ogg/Opus) with the caller and sends the engine
replica decoded PCM; the engine replica sends back each 80 ms output as PCM plus its text
token. So Opus, the protocol and the WebSocket to the caller cost CPU in the ingress, which
scales with ingress replicas, never on the engine's tick thread (ADR 0095).

One WebSocket binary message per item:

====== ===================================================================================
kind   payload
====== ===================================================================================
0x01   ingress -> engine: one caller frame, 1920 float32 LE samples (24 kHz, 80 ms)
0x11   engine -> ingress: step u32, text token i32, text length u16, text UTF-8, then the
       agent's 1920 float32 LE samples
0x15   engine -> ingress: the engine failed the call; UTF-8 reason (the call is over)
====== ===================================================================================

The first message on a data connection is a text message, the JSON ``{"ticket": ...}`` of
the slot the lease reserved (:mod:`.engine_replica`).
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np
import numpy.typing as npt

from ..errors import VoiceServerMoshiError

FRAME_SAMPLES: Final = 1920
KIND_FRAME: Final = 0x01
KIND_OUTPUT: Final = 0x11
KIND_ERROR: Final = 0x15
_PCM_BYTES: Final = FRAME_SAMPLES * 4
_OUT_HEAD = struct.Struct("<BIiH")

PCM = npt.NDArray[np.float32]


class WireError(VoiceServerMoshiError, ValueError):
    """A data-plane message that is not what this module writes."""


def encode_frame(pcm: PCM) -> bytes:
    if pcm.shape != (FRAME_SAMPLES,):
        raise WireError(f"a frame is {FRAME_SAMPLES} samples, got shape {pcm.shape}")
    return bytes((KIND_FRAME,)) + pcm.astype("<f4", copy=False).tobytes()


def decode_frame(data: bytes) -> PCM:
    if len(data) != 1 + _PCM_BYTES or data[0] != KIND_FRAME:
        raise WireError(f"expected a 0x01 frame of {1 + _PCM_BYTES} bytes, got "
                        f"{len(data)} bytes of kind {data[:1].hex() or 'none'}")
    return np.frombuffer(data, dtype="<f4", offset=1).astype(np.float32)


def encode_output(step: int, text_token: int, text: str | None, pcm: PCM) -> bytes:
    raw = (text or "").encode("utf-8")
    if len(raw) > 0xFFFF:
        raise WireError("text piece too long")
    return (_OUT_HEAD.pack(KIND_OUTPUT, step, text_token, len(raw)) + raw
            + pcm.astype("<f4", copy=False).tobytes())


def encode_error(message: str) -> bytes:
    return bytes((KIND_ERROR,)) + message.encode("utf-8")


class Output:
    """One decoded 0x11 message."""

    __slots__ = ("pcm", "step", "text", "text_token")

    def __init__(self, step: int, text_token: int, text: str | None, pcm: PCM) -> None:
        self.step = step
        self.text_token = text_token
        self.text = text
        self.pcm = pcm


class EngineFailure:
    """One decoded 0x15 message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def decode_reply(data: bytes) -> Output | EngineFailure:
    if not data:
        raise WireError("empty message")
    if data[0] == KIND_ERROR:
        return EngineFailure(data[1:].decode("utf-8", errors="replace"))
    if data[0] != KIND_OUTPUT or len(data) < _OUT_HEAD.size:
        raise WireError(f"unknown or truncated reply of kind 0x{data[0]:02x}")
    _, step, token, n = _OUT_HEAD.unpack_from(data)
    start = _OUT_HEAD.size + n
    if len(data) != start + _PCM_BYTES:
        raise WireError(f"reply of {len(data)} bytes, expected {start + _PCM_BYTES}")
    try:
        text = data[_OUT_HEAD.size:start].decode("utf-8") if n else None
    except UnicodeDecodeError as exc:  # found by tests/cluster/test_wire_fuzz.py
        raise WireError(f"reply text is not UTF-8: {exc.reason}") from None
    pcm = np.frombuffer(data, dtype="<f4", offset=start).astype(np.float32)
    return Output(step, token, text, pcm)

"""What a call asks of its engine and what the engine answers: the one vocabulary that
the in-process engine, the data plane and the server-side call share (ADR 0110).

A new per-call feature is one more field of :class:`CallParams` (given when the call
opens, e.g. persona prompts) or one more request / event type here; the data plane
(:mod:`.wire`) carries each of them, and :mod:`.local` applies them to the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from ..engine.call_sampling import SAMPLING_KEYS
from ..engine.slot import SlotError, SlotOutput, SttOutput

__all__ = [
    "AnswerStatus", "CallClosed", "CallEvent", "CallLink", "CallParams", "CallRequest",
    "CancelSay", "EngineGateway", "FinishCaller", "Grant", "SayAudio", "SayText",
    "SteerAnswer",
]

PCM = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class CallParams:
    """What a caller asked for when the call opened (checked by the front door, applied by
    the engine). ``sampling_query``: Kyutai's sampling query parameters as sent (ADR 0080);
    the engine applies them over its own defaults and draws the seeds."""

    sampling_query: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> CallParams:
        return cls(sampling_query={k: query[k] for k in SAMPLING_KEYS if k in query})

    def as_dict(self) -> dict[str, Any]:
        return {"sampling_query": dict(self.sampling_query)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CallParams:
        q = d.get("sampling_query") or {}
        if not isinstance(q, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in q.items()):
            raise ValueError("sampling_query must be an object of strings")
        return cls(sampling_query=dict(q))


@dataclass(frozen=True, slots=True)
class Grant:
    """What the engine granted a call: what its ``0x04`` metadata reports."""

    #: The applied sampling, seeds drawn (:meth:`CallSampling.as_dict`).
    sampling: Mapping[str, Any]
    model: str
    lm_model_file: str
    mimi_model_file: str
    slots: int
    #: The engine has an STT beside Moshi: caller transcripts (0x50-0x53) come back.
    caller_transcript: bool = False
    #: The engine draws each call's tokens with its own sampling (ADR 0080).
    per_call_sampling: bool = True
    #: Where the call runs, for the metadata (the cluster: its replica).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sampling": dict(self.sampling), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Grant:
        return cls(sampling=dict(d["sampling"]), model=str(d["model"]),
                   lm_model_file=str(d["lm_model_file"]),
                   mimi_model_file=str(d["mimi_model_file"]), slots=int(d["slots"]),
                   caller_transcript=bool(d.get("caller_transcript", False)),
                   per_call_sampling=bool(d.get("per_call_sampling", True)),
                   extra=dict(d.get("extra") or {}))


# -- requests: server-side call -> engine ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class SayText:
    request_id: str
    text: str


@dataclass(frozen=True, slots=True)
class SayAudio:
    """24 kHz mono int16 LE ``pcm`` whose words are ``text``."""

    request_id: str
    text: str
    pcm16: bytes


@dataclass(frozen=True, slots=True)
class CancelSay:
    flush: bool = True


@dataclass(frozen=True, slots=True)
class FinishCaller:
    """The caller's audio has ended: send the transcript's last words, then ``final``."""


CallRequest = SayText | SayAudio | CancelSay | FinishCaller

# -- events: engine -> server-side call -----------------------------------------------------

AnswerStatus = Literal["queued", "failed"]


@dataclass(frozen=True, slots=True)
class SteerAnswer:
    """The engine's answer to a say request (its later progress rides on outputs)."""

    request_id: str
    status: AnswerStatus
    message: str = ""


@dataclass(frozen=True, slots=True)
class CallClosed:
    """The engine ended the call in order (a replica stopping): close with ``code``."""

    code: int
    reason: str


#: Everything a call's engine sends back. :class:`SlotError` ends the call (1011).
CallEvent = SlotOutput | SttOutput | SlotError | SteerAnswer | CallClosed


class CallLink(Protocol):
    """One call on an engine, in this process or another."""

    grant: Grant

    async def send_frame(self, pcm: PCM) -> bool:
        """One 80 ms caller frame; False once the engine has ended the call."""

    async def request(self, req: CallRequest) -> SteerAnswer | None:
        """A steering or flush request: the engine's answer at once, or None when it
        comes later through :meth:`events` (a remote engine) or there is none."""

    def events(self) -> AsyncIterator[CallEvent]:
        """The engine's events in order, until the call ends."""

    async def aclose(self) -> None:
        """Leave the engine (idempotent)."""


class EngineGateway(Protocol):
    """Where calls get their engine."""

    async def open(self, call_id: str, params: CallParams, wait_s: float) -> CallLink:
        """Admit a call; raises ServerBusyError when no slot frees within ``wait_s``,
        SamplingError for sampling the engine refuses."""

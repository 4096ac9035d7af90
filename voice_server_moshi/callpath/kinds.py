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
from ..engine.persona import PersonaPrompt, parse_persona_query
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
    the engine applies them over its own defaults and draws the seeds. ``persona`` (wrapped
    in ``<system>`` tags) and ``voice`` (a voice name): NVIDIA's ``text_prompt`` and
    ``voice_prompt`` (PersonaPlex, ADR 0130); their ``seed`` becomes both sampling seeds
    unless the query sets those apart."""

    sampling_query: Mapping[str, str] = field(default_factory=dict)
    persona: str | None = None
    voice: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> CallParams:
        """Raises :class:`~..engine.persona.PersonaError` for a malformed persona, voice or
        seed."""
        sampling = {k: query[k] for k in SAMPLING_KEYS if k in query}
        req = parse_persona_query(query)
        if req.seed is not None:  # NVIDIA's one seed, as the embedded transport applies it
            sampling.setdefault("text_seed", str(req.seed))
            sampling.setdefault("audio_seed", str(req.seed))
        prompt = req.prompt or PersonaPrompt()
        return cls(sampling_query=sampling, persona=prompt.text, voice=prompt.voice)

    @property
    def prompt(self) -> PersonaPrompt | None:
        """The persona prompt asked for, unchecked; None without one."""
        if self.persona is None and self.voice is None:
            return None
        return PersonaPrompt(self.persona, self.voice)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sampling_query": dict(self.sampling_query)}
        if self.prompt is not None:
            d.update(persona=self.persona, voice=self.voice)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CallParams:
        q = d.get("sampling_query") or {}
        if not isinstance(q, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in q.items()):
            raise ValueError("sampling_query must be an object of strings")
        persona, voice = d.get("persona"), d.get("voice")
        for name, value in (("persona", persona), ("voice", voice)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or null")
        return cls(sampling_query=dict(q), persona=persona, voice=voice)


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
    #: The persona prompt applied (ADR 0130): the wrapped text and the voice (the default
    #: voice filled in); both None without one. ``persona_cached``: its row came from the
    #: prompt cache (no prefill); None without a prompt.
    persona: str | None = None
    voice: str | None = None
    persona_cached: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sampling": dict(self.sampling), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Grant:
        return cls(sampling=dict(d["sampling"]), model=str(d["model"]),
                   lm_model_file=str(d["lm_model_file"]),
                   mimi_model_file=str(d["mimi_model_file"]), slots=int(d["slots"]),
                   caller_transcript=bool(d.get("caller_transcript", False)),
                   per_call_sampling=bool(d.get("per_call_sampling", True)),
                   extra=dict(d.get("extra") or {}),
                   persona=_opt_str(d.get("persona")), voice=_opt_str(d.get("voice")),
                   persona_cached=(None if d.get("persona_cached") is None
                                   else bool(d["persona_cached"])))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


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
        """Admit a call (with a persona: once its prompt is in the row); raises
        ServerBusyError when no slot frees within ``wait_s``, SamplingError for sampling
        the engine refuses, PersonaError for a persona or voice it cannot take."""

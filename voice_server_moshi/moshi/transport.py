"""The transport interface under the Moshi adapter (the shape of httpx's transports).

The adapter owns the telephony side (G.711, resampling, framing, VAD, events); a transport
moves Moshi frames: 80 ms of 24 kHz float32 PCM in, agent PCM and text out. The remote
transport puts Ogg/Opus on Kyutai's WebSocket protocol; the embedded one hands frames to a
slot of the in-process batched engine; tests use scripted transports.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..audio.moshi_frame import FRAME_SAMPLES, SAMPLE_RATE
from ..engine.persona import PersonaError
from ..errors import SteeringUnsupportedError

#: Moshi's sample rate and frame: 80 ms at 24 kHz.
MOSHI_SAMPLE_RATE = SAMPLE_RATE
MOSHI_FRAME_SAMPLES = FRAME_SAMPLES
MOSHI_FRAME_MS = 80

PCM = npt.NDArray[np.float32]

NOT_STEERABLE = ("this Moshi peer cannot be steered (Kyutai's own servers take no say/cancel "
                 "requests); use the embedded transport or voice-server-moshi serve")


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """Agent PCM, 24 kHz float32 mono in [-1, 1], any length (usually one 80 ms frame)."""

    pcm: PCM = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgentText:
    """One piece of Moshi's inner-monologue text, as the server sent it (e.g. ' hel')."""

    text: str


@dataclass(frozen=True, slots=True)
class PeerError:
    """A non-fatal error: the peer's error message (Kyutai's ``0x05``, ``code="peer_error"``)
    or a malformed message from it that was skipped (``code="protocol_error"``)."""

    message: str
    code: str = "peer_error"


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer ended the session. ``clean`` is False when it vanished (no close frame)."""

    code: int | None
    reason: str
    clean: bool


SteerStatus = Literal["queued", "started", "finished", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class SteerUpdate:
    """Progress of a steering request (say text / say audio; ADR 0070). ``started`` and
    ``finished`` come with the first and last agent frame the request forced."""

    request_id: str
    status: SteerStatus
    message: str = ""


@dataclass(frozen=True, slots=True)
class CallerText:
    """One step of the caller's transcript (Kyutai STT, ADR 0075): a text piece as Kyutai's
    tokenizer writes it (``" hel"``), or None for a step without one; ``stream_ms`` is the
    caller stream time at which it came out (the audio it transcribes is the STT's delay
    earlier); ``end_of_turn`` the end-of-turn head's probability where there is one."""

    text: str | None
    stream_ms: float
    end_of_turn: float | None = None


@dataclass(frozen=True, slots=True)
class CallerFlushed:
    """The caller transcript is complete: the answer to :meth:`MoshiTransport.flush_caller`."""


TransportEvent = (AgentAudio | AgentText | PeerError | PeerClosed | SteerUpdate | CallerText
                  | CallerFlushed)


async def queued_events(
    queue: asyncio.Queue[TransportEvent | None],
) -> AsyncIterator[TransportEvent]:
    """A transport's ``receive()`` over its event queue: ends after a PeerClosed or a None."""
    while True:
        event = await queue.get()
        if event is None:
            return
        yield event
        if isinstance(event, PeerClosed):
            return


class MoshiTransport(ABC):
    """One call's link to a Moshi model."""

    #: This transport delivers :class:`CallerText` (known once :meth:`open` returned).
    caller_transcript: bool = False

    async def flush_caller(self) -> None:
        """The call is ending: ask for the caller transcript's last words (the STT runs
        its delay's worth of silence); a :class:`CallerFlushed` follows them. Transports
        without a caller transcript have nothing to flush."""
        return None

    @abstractmethod
    async def open(self, call_id: str) -> str:
        """Start the session; return a session id.

        Raises :class:`~voice_server_moshi.errors.ServerBusyError` when the peer has no free
        capacity, :class:`~voice_server_moshi.errors.ConnectTimeoutError` when the handshake
        does not come in time, :class:`~voice_server_moshi.errors.ConnectError` otherwise.
        """

    @abstractmethod
    async def send_frame(self, pcm: PCM) -> None:
        """Send one caller frame: exactly ``MOSHI_FRAME_SAMPLES`` float32 samples at 24 kHz."""

    @abstractmethod
    def receive(self) -> AsyncIterator[TransportEvent]:
        """Agent audio, text and peer errors; ends after a :class:`PeerClosed`."""

    @abstractmethod
    async def close(self) -> None:
        """Close from our side. Idempotent; must not hang."""

    # -- steering (ADR 0070): only transports whose peer can be steered override these --

    @property
    def steerable(self) -> bool:
        """The peer takes say-text / say-audio / cancel (known once open)."""
        return False

    async def say_text(self, text: str) -> str:
        """Queue ``text`` for the agent to say; returns the request id."""
        raise SteeringUnsupportedError(f"{type(self).__name__}: {NOT_STEERABLE}")

    async def say_audio(self, pcm: PCM, text: str = "") -> str:
        """Queue 24 kHz mono float32 ``pcm`` (with its words) for the agent to say."""
        raise SteeringUnsupportedError(f"{type(self).__name__}: {NOT_STEERABLE}")

    async def cancel_say(self, flush: bool = True) -> None:
        """Stop the request being said (and with ``flush`` the queued ones)."""
        raise SteeringUnsupportedError(f"{type(self).__name__}: {NOT_STEERABLE}")

    @property
    def persona_refusal(self) -> str | None:
        """Why :meth:`set_persona` cannot change this call's persona (None: it can)."""
        return (f"{type(self).__name__} cannot change the persona of a running call "
                "(NVIDIA's protocol has no message for it): set moshi.persona before the "
                "call, or use the embedded transport")

    async def set_persona(self, persona: str | None, voice: str | None) -> None:
        """Give the running call another persona and/or voice (PersonaPlex, ADR 0130): the
        conversation so far leaves the model's context; returns once the new prompt is in."""
        raise PersonaError(f"{type(self).__name__} cannot change the persona of a running "
                           "call (NVIDIA's protocol has no message for it: start a new call "
                           "with the new text_prompt/voice_prompt); the embedded transport can")

"""Host events: frozen dataclasses whose ``name`` is the host's kebab-case event name.

``connected`` is always first and ``disconnected`` always last, exactly once (enforced by
:class:`voice_server_moshi.adapter.BaseAdapter`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from .capabilities import Capabilities
from .formats import AudioFormat

SpeechSource = Literal["provider", "local-vad"]
Role = Literal["caller", "agent"]


@dataclass(frozen=True, slots=True)
class Connected:
    """The session is ready; always the first event."""

    name: ClassVar[str] = "connected"
    session_id: str
    capabilities: Capabilities


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Agent audio for the caller: exactly one frame of the call's format and frame size."""

    name: ClassVar[str] = "audio-chunk"
    audio: bytes = field(repr=False)
    format: AudioFormat

    @property
    def duration_ms(self) -> float:
        return self.format.duration_ms(len(self.audio))


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller began speaking, at ``t_ms`` of caller stream time."""

    name: ClassVar[str] = "speech-started"
    t_ms: float
    source: SpeechSource


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The caller stopped speaking, at ``t_ms`` of caller stream time."""

    name: ClassVar[str] = "speech-ended"
    t_ms: float
    source: SpeechSource


@dataclass(frozen=True, slots=True)
class Error:
    """Something went wrong. ``fatal`` errors are followed by ``disconnected``."""

    name: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The session is over; always the last event, emitted exactly once."""

    name: ClassVar[str] = "disconnected"
    reason: str
    close_code: int | None = None


@dataclass(frozen=True, slots=True)
class Interruption:
    """The provider cut its own reply short (caller barge-in): flush playout now."""

    name: ClassVar[str] = "interruption"
    t_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """Text of what the caller or the agent said; ``final`` marks a settled piece."""

    name: ClassVar[str] = "transcript"
    role: Role
    text: str
    final: bool = True


SteeringStatus = Literal["queued", "started", "finished", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class Steering:
    """Progress of a host's say request (adapters with ``capabilities.steering``):
    ``queued`` (accepted), ``started`` (its first agent frame), ``finished`` (its last),
    ``cancelled``, or ``failed`` (``message`` says why). ``t_ms`` is agent stream time."""

    name: ClassVar[str] = "steering"
    request_id: str
    status: SteeringStatus
    t_ms: float | None = None
    message: str = ""


Event = (
    Connected
    | AudioChunk
    | SpeechStarted
    | SpeechEnded
    | Error
    | Disconnected
    | Interruption
    | Transcript
    | Steering
)

EVENT_TYPES: tuple[type[Event], ...] = (
    Connected,
    AudioChunk,
    SpeechStarted,
    SpeechEnded,
    Error,
    Disconnected,
    Interruption,
    Transcript,
    Steering,
)
EVENT_NAMES: frozenset[str] = frozenset(t.name for t in EVENT_TYPES)

"""The host's turn-based callbacks, as the full-duplex mode drives them.

A turn-based voice-server already has these callbacks (recording, analytics, barge-in
handling); the mode calls them from continuous streams. Every ``t_ms`` is call time: ms of
caller media since the call started (the mode's clock), so caller and agent events share
one timeline. Callbacks are plain functions: they must return quickly (start a task for
slow work). An exception in a callback is logged and the call goes on.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..events import Role


@runtime_checkable
class HostCallbacks(Protocol):
    """What a host implements to receive the mode's turns. Names are the host's callbacks."""

    def on_user_turn_started(self, t_ms: float, barge_in: bool) -> None:
        """The caller took a turn at ``t_ms`` (speech onset). ``barge_in`` is True when it
        interrupts agent speech: the only caller speech during agent speech that is reported
        (backchannels are not)."""

    def on_user_turn_ended(self, t_ms: float) -> None:
        """The caller's turn ended at ``t_ms`` (end of speech)."""

    def on_agent_audio(self, audio: bytes, t_ms: float) -> None:
        """One frame of agent audio in the call's format, played out at ``t_ms``; continuous
        (silence included) for as long as the call runs."""

    def on_agent_turn_started(self, t_ms: float) -> None:
        """The agent began speaking at ``t_ms`` (first audible frame)."""

    def on_agent_turn_ended(self, t_ms: float, interrupted: bool) -> None:
        """The agent stopped speaking at ``t_ms``; ``interrupted`` when a barge-in was under
        way (Moshi yielded)."""

    def on_transcript(self, role: Role, text: str, final: bool, t_ms: float) -> None:
        """Text of the caller or the agent (Moshi's text tokens for the agent)."""

    def on_error(self, code: str, message: str, fatal: bool) -> None:
        """Something went wrong; fatal errors are followed by ``on_disconnected``."""

    def on_disconnected(self, reason: str, t_ms: float) -> None:
        """The call is over: called exactly once, and no callback follows it."""


@runtime_checkable
class SteeringCallbacks(Protocol):
    """Optional, beside :class:`HostCallbacks`: a host that has this method hears every
    steering event of its requests (see :mod:`.steering_marks`)."""

    def on_agent_steering(self, request_id: str, status: str, t_ms: float) -> None:
        """A say request's progress at call time ``t_ms``: queued, started, finished,
        cancelled or failed."""

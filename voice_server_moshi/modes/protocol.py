"""What a host drives: the :class:`Mode` protocol every orchestration mode implements.

A mode runs one call between a host's turn callbacks
(:class:`~.callbacks.HostCallbacks`) and a voice-model adapter. Hosts get one from
``registry.create_mode(name, settings, adapter=..., host=..., config=..., clock=...)``,
which checks the result against this protocol, so a host needs no ``getattr``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .overlap import OverlapDecision

__all__ = ["Mode"]


@runtime_checkable
class Mode(Protocol):
    """One call in an orchestration mode (``full-duplex``: :class:`.full_duplex.FullDuplexMode`)."""

    #: Registry name of the mode.
    mode_name: str
    #: Call time (ms) of the next frame period.
    t_ms: float
    #: Wall ms from sending caller media to receiving the agent audio for the same stream
    #: position (a bounded window of the most recent, for latency reports).
    response_wall_ms: Sequence[float]
    #: Call time (ms) at which agent audio arrived (a bounded window, for playout sizing).
    arrival_ms: Sequence[float]

    async def start(self) -> None:
        """Connect the adapter and start the call clock."""

    def push_caller_audio(self, chunk: bytes, media_ms: float | None = None) -> None:
        """Caller media in the call's format as it arrives: whole samples, any length; or,
        with ``media_ms`` (the packet's media time, e.g. from its RTP timestamp), whole
        frames placed by that time in the caller jitter buffer."""

    async def tick(self) -> None:
        """One frame period (hosts on a virtual clock call it; a real clock calls it)."""

    async def settle(self, max_lag_ms: float = 160.0, timeout_s: float = 10.0) -> bool:
        """Virtual-clock hosts: wait for the model to catch up; False on timeout."""

    async def stop(self, reason: str = "host") -> None:
        """End the call; the host's ``on_disconnected`` is the last callback."""

    async def wait_ended(self) -> None:
        """Return once the call has ended (from either side)."""

    @property
    def ended(self) -> bool:
        """True once the call has ended."""

    def create_response(self, **request: Any) -> asyncio.Task[str] | None:
        """A turn-based host asks for a reply. A mode that can steer the model (the
        full-duplex mode with ``text=`` or ``audio=`` and a steerable adapter) returns the
        task whose result is the request id; otherwise None (the model replies by itself)."""

    def commit_turn(self, **request: Any) -> None:
        """A turn-based host commits the caller's turn."""

    def cancel_response(self, **request: Any) -> asyncio.Task[str] | None:
        """A turn-based host cancels the reply: the task of the steering cancel when there
        is something to cancel, else None."""

    @property
    def overlaps(self) -> list[OverlapDecision]:
        """Caller-over-agent overlaps and their verdicts."""

    def stats(self) -> dict[str, Any]:
        """The call's counters and playout statistics (JSON-ready)."""

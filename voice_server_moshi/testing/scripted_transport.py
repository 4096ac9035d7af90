"""An in-memory :class:`MoshiTransport` for tests, like httpx's ``MockTransport``.

It keeps Moshi's clock: every caller frame sent gives one agent frame back (the same PCM,
``echo=True``, so a test can check the whole audio path end to end; or silence), after
``delay_frames`` frames, the way Moshi answers each 80 ms frame with one. Tests push text,
peer errors and closes with :meth:`ScriptedTransport.push`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

from ..moshi.transport import (
    MOSHI_FRAME_SAMPLES,
    PCM,
    AgentAudio,
    MoshiTransport,
    TransportEvent,
    queued_events,
)

__all__ = ["ScriptedTransport"]


class ScriptedTransport(MoshiTransport):
    """Scripted Moshi peer. ``sent`` holds every caller frame received, in order."""

    def __init__(
        self,
        *,
        echo: bool = True,
        delay_frames: int = 0,
        session_id: str = "scripted-session",
        open_error: BaseException | None = None,
    ) -> None:
        self.echo = echo
        self.delay_frames = delay_frames
        self.session_id = session_id
        self.open_error = open_error
        self.sent: list[PCM] = []
        self.opened_with: str | None = None
        self.closed = False
        self._pending: deque[PCM] = deque()
        self._events: asyncio.Queue[TransportEvent | None] = asyncio.Queue()

    async def open(self, call_id: str) -> str:
        if self.open_error is not None:
            raise self.open_error
        self.opened_with = call_id
        return self.session_id

    async def send_frame(self, pcm: PCM) -> None:
        if pcm.dtype != np.float32 or pcm.shape != (MOSHI_FRAME_SAMPLES,):
            raise ValueError(f"bad frame {pcm.dtype} {pcm.shape}")
        if self.closed:
            return
        self.sent.append(pcm.copy())
        self._pending.append(pcm.copy() if self.echo else np.zeros_like(pcm))
        if len(self._pending) > self.delay_frames:
            self._events.put_nowait(AgentAudio(self._pending.popleft()))

    def push(self, event: TransportEvent) -> None:
        """Deliver an event as if the peer had sent it."""
        self._events.put_nowait(event)

    async def receive(self) -> AsyncIterator[TransportEvent]:
        async for event in queued_events(self._events):
            yield event

    async def close(self) -> None:
        self.closed = True
        self._events.put_nowait(None)

"""The bounded event queue between an adapter and a consumer that may be slow.

Policy (documented in the README): the queue holds at most ``max_events`` events. When it is
full, the oldest queued ``audio-chunk`` is dropped first (stale agent audio is worthless to a
caller), then the oldest droppable non-lifecycle event. ``connected``, ``disconnected`` and
fatal ``error`` events are never dropped, so memory stays bounded by ``max_events`` plus a
handful, and a consumer that resumes always learns how the session ended.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .events import AudioChunk, Connected, Disconnected, Error, Event


def _is_lifecycle(event: Event) -> bool:
    return isinstance(event, Connected | Disconnected) or (
        isinstance(event, Error) and event.fatal
    )


class EventQueue:
    """Single-consumer, bounded, never-blocking event queue with a drop policy."""

    def __init__(self, max_events: int) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self.max_events = max_events
        self._items: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self.dropped_audio = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> bool:
        """Queue ``event``; return True when an older event had to be dropped for it."""
        dropped = False
        if len(self._items) >= self.max_events:
            dropped = self._drop_one()
            if not dropped and not _is_lifecycle(event):
                # Nothing droppable is queued: the new event itself is dropped.
                self.dropped += 1
                if isinstance(event, AudioChunk):
                    self.dropped_audio += 1
                return True
        self._items.append(event)
        self._wakeup.set()
        return dropped

    def _drop_one(self) -> bool:
        for i, item in enumerate(self._items):
            if isinstance(item, AudioChunk):
                del self._items[i]
                self.dropped += 1
                self.dropped_audio += 1
                return True
        for i, item in enumerate(self._items):
            if not _is_lifecycle(item):
                del self._items[i]
                self.dropped += 1
                return True
        return False

    def close(self) -> None:
        """No more events will come; the consumer ends once the queue is drained."""
        self._closed = True
        self._wakeup.set()

    async def get(self) -> Event | None:
        """The next event, or None when the queue is closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()

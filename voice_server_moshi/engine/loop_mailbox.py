"""The tick thread's outputs for one event loop, handed over with one wake-up per batch.

A tick produces one output per live call. Waking the loop once per call
(``call_soon_threadsafe`` each time) writes its self-pipe once per call, and every write
gives up the interpreter lock to a loop that then runs its Opus work while the tick still
delivers: the tick waited ~1.1 ms in delivery at 16 calls (ADR 0150). A mailbox wakes the
loop for the first output of a batch only; the loop then runs everything posted so far,
in order, in one callback.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LoopMailbox", "mailbox_for"]


class LoopMailbox:
    """Calls posted from any thread, run in order on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        #: Posted, not yet run; not empty exactly while a drain is scheduled.
        self._items: deque[tuple[Callable[[Any], None], Any]] = deque()

    def post(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` on the loop; raises RuntimeError when the loop is closed (the
        caller frees what it fed, as with ``call_soon_threadsafe``)."""
        if self._loop.is_closed():
            raise RuntimeError("Event loop is closed")
        with self._lock:
            first = not self._items  # later ones ride on the drain the first scheduled
            self._items.append((fn, arg))
        if first:
            # Raises only for a closed loop, which refuses every later post above.
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
        for fn, arg in items:
            try:
                fn(arg)
            except Exception as exc:  # one call's failure must not cost the others theirs
                self._loop.call_exception_handler(
                    {"message": "mailbox delivery failed", "exception": exc})


_boxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox] = (
    weakref.WeakKeyDictionary())
_boxes_lock = threading.Lock()


def mailbox_for(loop: asyncio.AbstractEventLoop) -> LoopMailbox:
    """The one mailbox of ``loop`` (every call on that loop shares it)."""
    with _boxes_lock:
        box = _boxes.get(loop)
        if box is None:
            box = _boxes[loop] = LoopMailbox(loop)
        return box

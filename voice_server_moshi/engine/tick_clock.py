"""The tick loop's schedule: one tick per period on an absolute clock, and what a late tick
does to it.

A tick that ends late by less than a period is made up at once: the next tick starts
straight away and the schedule keeps its phase. A tick that ends more than a period behind
(a stalled VM, a slow device) restarts the schedule from "now" instead of ticking back to
back until the old one is met: every caller then keeps the frame or two that queued
meanwhile (80 ms of lag each, until the backlog trim, ADR 0065), but the loop gets its idle
gap back at once. Catching up was measured: inside ``serve`` the back-to-back ticks share
the cores and the interpreter with the event loop's Opus work for the frames they produce,
so each took as long as a period, the loop never caught up, and the calls' lag climbed to
the queue's limit (ADR 0160).

Pure arithmetic on the times it is given, so tests drive it by hand.
"""

from __future__ import annotations

__all__ = ["TickClock"]


class TickClock:
    """When the next tick is due."""

    def __init__(self, period_s: float, now: float) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.period_s = period_s
        self.next_t = now
        #: How far behind the schedule the last tick ended (s; <= 0: on time).
        self.behind_s = 0.0

    def restart(self, now: float) -> None:
        """A fresh schedule from ``now`` (the first call after the engine sat empty)."""
        self.next_t = now
        self.behind_s = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds until the next tick is due; <= 0 means tick now."""
        return self.next_t - now

    def ticked(self, now: float) -> bool:
        """A tick due at :attr:`next_t` has just ended at ``now``. True when it ended more
        than a period behind the schedule (a late tick, counted): the schedule restarts."""
        self.next_t += self.period_s
        self.behind_s = now - self.next_t
        if self.behind_s <= self.period_s:
            return False
        self.next_t = now
        return True

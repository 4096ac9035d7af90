"""The tick loop's schedule: one tick per period on an absolute clock, and what a late tick
does to it.

Each caller sends a frame per period on its own clock, and each tick takes one frame from
every call. A tick that ends late (a stalled VM, a slow device, a garbage collection) leaves
every caller's queue a frame or two deeper. If the loop then restarted its schedule from
"now", that extra depth would stand for the rest of the call: every caller would hear
80 ms more lag per late tick, and the backlog trim leaves one frame of slack standing
(ADR 0065). So the loop keeps its schedule and ticks back to back until it is met again,
which consumes exactly the frames that queued meanwhile (ADR 0160).

It runs at most ``catch_up_ticks`` ticks back to back (the engine passes a caller's queue
length): frames beyond those were dropped as overruns, and ticking for them would only idle
the rows; the schedule's phase then moves. Pure arithmetic on the times it is given, so
tests drive it by hand.
"""

from __future__ import annotations

__all__ = ["TickClock"]


class TickClock:
    """When the next tick is due, on a schedule that a late tick does not shift."""

    def __init__(self, period_s: float, catch_up_ticks: int, now: float) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        if catch_up_ticks < 1:
            raise ValueError(f"catch_up_ticks must be >= 1, got {catch_up_ticks}")
        self.period_s = period_s
        self.catch_up_ticks = catch_up_ticks
        self.next_t = now

    def restart(self, now: float) -> None:
        """A fresh schedule from ``now`` (the first call after the engine sat empty)."""
        self.next_t = now

    def wait_s(self, now: float) -> float:
        """Seconds until the next tick is due; <= 0 means tick now."""
        return self.next_t - now

    def ticked(self, now: float) -> bool:
        """A tick due at :attr:`next_t` has just ended at ``now``. True when it ended more
        than one period behind the schedule (the ``late_ticks`` counter): a stall counts
        once per tick it takes to make up, and an overloaded engine on every tick."""
        self.next_t += self.period_s
        behind = now - self.next_t
        limit = (self.catch_up_ticks - 1) * self.period_s  # due now counts as one
        if behind > limit:
            self.next_t = now - limit  # frames older than the queues hold were dropped
        return behind > self.period_s

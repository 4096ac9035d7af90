"""The engine's own thread: a tick every 80 ms on :class:`.tick_clock.TickClock`'s
schedule while calls are live, a failed tick failing its calls (not the thread), and late
ticks counted and logged (ADR 0160)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from .._threads import name_os_thread
from .config import EngineConfig
from .slot import Slot
from .tick_clock import TickClock

__all__ = ["LATE_LOG_EVERY", "TickLoop"]

#: While the tick loop stays behind, one warning per this many late ticks.
LATE_LOG_EVERY = 100


class TickLoop:
    """The half of :class:`~voice_server_moshi.engine.core.Engine` that runs its thread;
    the engine sets these attributes up in its ``__init__``."""

    config: EngineConfig
    log: Any
    _lock: threading.Lock
    _slots: list[Slot | None]
    _stt_flush: list[Slot]
    _stop: threading.Event
    _wake: threading.Event
    _thread: threading.Thread | None
    _late_ticks: int
    # Annotations only (no class attribute), so the engine's own methods are found.
    tick: Callable[..., Any]
    _fail: Callable[[Slot, str], None]

    def tick_thread_alive(self) -> bool:
        """Whether the tick thread runs (one killed by an exception would leave every call
        silent while the process looks healthy; ``/readyz`` checks this)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _has_slots(self) -> bool:
        with self._lock:
            return bool(self._stt_flush) or any(s is not None for s in self._slots)

    def _run(self) -> None:
        name_os_thread("moshi-engine")  # its CPU and run-queue waits show in /proc
        period = self.config.tick_s
        # More than a tick behind restarts the schedule; bursting to catch up starves the
        # event loop in serve and never catches up (tick_clock.py, ADR 0160).
        clock = TickClock(period, time.monotonic())
        late_run = 0  # late ticks since the loop last met its schedule
        while not self._stop.is_set():
            if not self._has_slots():
                self._wake.wait(0.5)
                self._wake.clear()
                clock.restart(time.monotonic())
                late_run = 0
                continue
            delay = clock.wait_s(time.monotonic())
            if delay > 0:
                self._stop.wait(delay)
                continue
            try:
                self.tick(prefill_until=clock.next_t + period)
            except Exception as exc:
                # The model failed mid-tick: every row in flight is suspect. Fail the
                # calls (each gets an error); new calls reset their rows, so the engine
                # goes on serving. Logging must not kill this thread (a dead log sink).
                with contextlib.suppress(Exception):
                    self.log.exception("engine tick failed")
                with self._lock:
                    victims = [s for s in self._slots if s is not None]
                for s in victims:
                    self._fail(s, f"engine tick failed: {type(exc).__name__}: {exc}")
            if clock.ticked(time.monotonic()):
                with self._lock:
                    self._late_ticks += 1
                    live = sum(s is not None for s in self._slots)
                late_run += 1
                if late_run % LATE_LOG_EVERY == 1:  # once per fall, again if it lasts
                    self.log.warning("tick loop behind schedule", live_calls=live,
                                     behind_ms=round(1000 * clock.behind_s, 1),
                                     late_ticks=late_run)
            elif late_run and clock.behind_s <= 0:
                self.log.info("tick loop back on schedule", late_ticks=late_run)
                late_run = 0

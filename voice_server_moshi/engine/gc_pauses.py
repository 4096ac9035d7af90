"""Garbage-collector pauses, kept out of the tick's way and counted.

A full collection of the cyclic garbage collector holds the interpreter lock while it scans
every tracked object. With torch, moshi, the server and a warmed-up engine of 16 slots
that is about 280 000 objects and 120-130 ms on the 2-core VM: longer than a tick's 80 ms
budget, so one collection at the wrong moment makes a late tick, and every live call then
runs a frame behind until its backlog is trimmed (ADR 0150). :func:`freeze_heap` moves
what is alive when an engine starts (the models, the imports) out of the collector's
reach, so later collections scan only what the calls allocated; :data:`GC_PAUSES` times
every collection so ``/metrics`` shows what is left.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["GC_PAUSES", "GcPauseStats", "freeze_heap", "quiet_collector"]

GENERATIONS = (0, 1, 2)


@dataclass(frozen=True, slots=True)
class GcPauseStats:
    """Per generation (0, 1, 2): collections, seconds spent in them, the longest one;
    and the objects :func:`freeze_heap` moved out of the collector's reach."""

    collections: tuple[int, ...] = (0, 0, 0)
    seconds: tuple[float, ...] = (0.0, 0.0, 0.0)
    max_seconds: tuple[float, ...] = (0.0, 0.0, 0.0)
    frozen_objects: int = 0


class _Monitor:
    """Times every collection through ``gc.callbacks``. The callback runs with the
    interpreter lock held and the collector busy, so it only does arithmetic."""

    def __init__(self) -> None:
        self._installed = False
        self._install_lock = threading.Lock()
        self._started = 0.0
        self._count = [0, 0, 0]
        self._seconds = [0.0, 0.0, 0.0]
        self._max = [0.0, 0.0, 0.0]

    def install(self) -> None:
        """Start timing collections (once per process; later calls do nothing)."""
        with self._install_lock:
            if not self._installed:
                gc.callbacks.append(self._callback)
                self._installed = True

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = int(info.get("generation", 2))
        if gen not in GENERATIONS or not self._started:
            return
        dt = time.perf_counter() - self._started
        self._count[gen] += 1
        self._seconds[gen] += dt
        self._max[gen] = max(self._max[gen], dt)

    def snapshot(self) -> GcPauseStats:
        return GcPauseStats(tuple(self._count), tuple(self._seconds), tuple(self._max),
                            gc.get_freeze_count())


#: The process's collections (one collector per interpreter, so one monitor).
GC_PAUSES = _Monitor()


_frozen_once = threading.Lock()
_froze = False


def freeze_heap() -> int:
    """Collect once, then freeze every object alive now (``gc.freeze``): they are never
    scanned again, so a later full collection costs what was allocated since, not the
    models and imports. Once per process: the first engine to start does it (a server
    runs one engine; a second engine's models would be few objects more). Objects frozen
    here that later become cyclic garbage are not reclaimed; an engine host allocates its
    long-lived objects before it starts serving, so that is little. Returns the number of
    objects frozen."""
    global _froze
    with _frozen_once:
        if not _froze:
            gc.collect()
            gc.freeze()
            _froze = True
    return gc.get_freeze_count()


def quiet_collector(*, freeze: bool) -> int:
    """What an engine does when its tick thread starts: time every collection from now
    on, and freeze the heap (:func:`freeze_heap`) unless told not to. Returns the number
    of objects frozen."""
    GC_PAUSES.install()
    return freeze_heap() if freeze else gc.get_freeze_count()

"""Probes that ``bench engine`` adds to its points: latency recovery after a stall (split from
:mod:`.engine` to keep it small)."""

from __future__ import annotations

from typing import Any

from .._log import get_logger

log = get_logger(__name__)

BUDGET_MS = 80.0


def stall_recovery(eng: Any, calls: list[Any], frame: Any, stall_ticks: int = 12,
                   limit_ticks: int = 40) -> dict[str, Any]:
    """Every call's input arrives in a burst after a stall of ``stall_ticks`` (1 s), then in
    real time again: how many ticks until every call's backlog is back at the engine's
    target depth (ADR 0065), and what was dropped on the way."""
    before = eng.metrics()
    for _ in range(stall_ticks):
        for c in calls:
            c.push(frame)
    target = eng.config.target_frames + 1  # depth before a tick: the target plus the new frame
    ticks = None
    for k in range(limit_ticks):
        for c in calls:
            c.push(frame)
        if max(dict(eng.metrics().input_depths).values()) <= target:
            ticks = k
            break
        eng.tick()
    after = eng.metrics()
    return {
        "stall_frames": stall_ticks,
        "ticks_to_target": ticks,
        "seconds_to_target": None if ticks is None else round(ticks * eng.config.tick_s, 3),
        "trimmed_frames": after.trimmed - before.trimmed,
        "overrun_frames": after.overruns - before.overruns,
    }

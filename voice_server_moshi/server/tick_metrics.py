"""The engine's recent tick quantiles as Prometheus gauges, named once for ``serve`` and the
cluster (torch-free): finer than the tick histogram's buckets, over the last 2048 ticks."""

from __future__ import annotations

__all__ = ["TICK_QUANTILES"]

#: (metric name, field of the engine's metrics snapshot / a replica's report, help).
TICK_QUANTILES: tuple[tuple[str, str, str], ...] = tuple(
    (f"moshi_engine_tick_recent_{q}_seconds", f"tick_{q}_s",
     f"Tick time {q} over the engine's last 2048 ticks (80 ms is the real-time budget).")
    for q in ("p50", "p99"))

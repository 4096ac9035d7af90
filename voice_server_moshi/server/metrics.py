"""Prometheus metrics of ``serve``, exposed through ``prometheus-client``.

The engine and the server keep plain counters (cheap, no locks on the hot path beyond the
engine's own); a custom collector turns a snapshot of them into metric families at scrape
time, and ``prometheus_client`` writes the text format. Each server has its own registry,
so several servers (tests, one process serving two engines) never share a metric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..engine.metrics import TICK_BUCKETS_S, EngineMetrics
from .counters import ServerCounters, server_families
from .gc_metrics import gc_families
from .prompt_metrics import PROMPT_METRICS
from .tick_metrics import TICK_QUANTILES

__all__ = ["CONTENT_TYPE", "PROMPT_METRICS", "ServerCollector", "ServerCounters", "render_metrics",
           "server_families"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _engine_families(m: EngineMetrics) -> Iterator[Metric]:
    def gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, help_, value=value)

    def counter(name: str, help_: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, help_, value=value)

    yield gauge("moshi_engine_slots", "Call slots in the engine batch.", m.slots)
    yield gauge("moshi_engine_active_slots", "Slots held by calls.", m.active_slots)
    yield gauge("moshi_engine_ready", "1 when warmed up.", float(m.ready))
    yield counter("moshi_engine_ticks", "Ticks that ran the model.", m.ticks)
    yield counter("moshi_engine_late_ticks",
                  "Ticks that ended over a tick behind the 80 ms schedule (it then restarts).",
                  m.late_ticks)
    yield counter("moshi_engine_underruns", "Silence frames fed to starved calls.", m.underruns)
    yield counter("moshi_engine_overruns", "Caller frames dropped from full input queues.",
                  m.overruns)
    trimmed = getattr(m, "trimmed", None)
    if trimmed is not None:
        yield counter("moshi_engine_trimmed_frames",
                      "Caller frames dropped to bring a backlog back to its target depth "
                      "after a stall.", trimmed)
    depths = getattr(m, "input_depths", None)
    if depths is not None:
        g = GaugeMetricFamily("moshi_engine_input_depth_frames",
                              "Caller frames queued per slot (80 ms each).", labels=["slot"])
        for slot, depth in depths:
            g.add_metric([str(slot)], depth)
        yield g
    yield counter("moshi_engine_calls_started", "Calls given a slot.", m.calls_started)
    yield counter("moshi_engine_calls_refused", "Calls refused for want of a slot.",
                  m.calls_refused)
    buckets = [(str(le), float(c)) for le, c in zip(TICK_BUCKETS_S, m.tick_buckets, strict=True)]
    buckets.append(("+Inf", float(m.tick_count)))
    yield HistogramMetricFamily(
        "moshi_engine_tick_seconds",
        "Time of one engine tick (Mimi encode, LM step, Mimi decode for all slots).",
        buckets=buckets, sum_value=m.tick_sum_s)
    for name, attr, help_ in TICK_QUANTILES:
        value = getattr(m, attr)
        if value is not None:  # none before the first tick
            yield gauge(name, help_, value)
    width = getattr(m, "batch_width", None)
    if width is not None:  # in-process engines (a cluster's replica snapshot has none)
        yield gauge("moshi_engine_batch_width",
                    "Rows the last tick stepped: the live calls, packed first.", width)
        yield counter("moshi_engine_row_moves",
                      "Calls moved to a lower row when a call below them left.", m.row_moves)
    yield from gc_families([((), dataclasses.asdict(m.gc))])
    yield gauge("moshi_engine_state_bytes_per_slot",
                "Streaming state (KV cache, conv buffers) per slot.", m.state_bytes_per_slot)
    yield gauge("moshi_engine_weights_bytes", "Model weights.", m.weights_bytes)
    if m.device_memory_bytes is not None:
        yield gauge("moshi_engine_device_memory_bytes", "GPU memory allocated by torch.",
                    m.device_memory_bytes)
    if m.process_rss_bytes is not None:
        yield gauge("process_resident_memory_bytes", "Resident memory of the process.",
                    m.process_rss_bytes)
    p = getattr(m, "persona", None)
    if p is not None and p.enabled:  # the prompt cache and prefills (PersonaPlex, ADR 0130)
        for name, family, help_, attr in PROMPT_METRICS:
            yield family(name, help_, value=getattr(p, attr))


class ServerCollector(Collector):
    """Snapshots the engine and server counters at each scrape."""

    def __init__(self, engine_metrics: Callable[[], EngineMetrics], counters: ServerCounters,
                 tick_thread_alive: Callable[[], bool] | None = None) -> None:
        self._engine_metrics = engine_metrics
        self._counters = counters
        self._alive = tick_thread_alive

    def collect(self) -> Iterator[Metric]:
        yield from _engine_families(self._engine_metrics())
        yield from server_families(self._counters,
                                    None if self._alive is None else self._alive())


def new_registry(collector: ServerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def render_metrics(m: EngineMetrics, c: ServerCounters) -> str:
    """The text format for one snapshot (kept for callers of the hand-written version)."""
    return render(new_registry(ServerCollector(lambda: m, c)))

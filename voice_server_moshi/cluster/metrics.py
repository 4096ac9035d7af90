"""Prometheus text for the cluster ingress: every engine replica's figures, labelled by
replica, plus this ingress's counters, through ``prometheus-client`` like
:mod:`voice_server_moshi.server.metrics`; no Ray and no torch here (the ingress does not
load the model: bucket bounds come with each replica's snapshot)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..server.counters import ServerCounters, server_families
from ..server.gc_metrics import gc_families
from ..server.limits import CloseReason
from ..server.prompt_metrics import PROMPT_METRICS
from ..server.tick_metrics import TICK_QUANTILES

#: Endings that are a call limit (ADR 0065): ``moshi_ingress_calls_reaped_total``.
_LIMIT_REASONS = frozenset({CloseReason.FIRST_AUDIO, CloseReason.NO_INPUT,
                            CloseReason.MAX_CALL, CloseReason.AHEAD, CloseReason.FLOOD,
                            CloseReason.MALFORMED, CloseReason.BAD_AUDIO})


@dataclass
class IngressCounters(ServerCounters):
    """The call path's counters (:class:`ServerCounters`) plus the ingress's own."""

    replica_failures: int = 0
    routed: int = 0
    routing_seconds_sum: float = 0.0

    @property
    def active_calls(self) -> int:
        return self.active_connections

    @property
    def calls_reaped(self) -> int:
        """Calls closed for a limit (timeouts, rate, audio ahead, malformed; ADR 0065)."""
        return sum(n for r, n in self.closed.items() if r in _LIMIT_REASONS)


class IngressCollector(Collector):
    """Every replica's figures (labelled by replica) and this ingress's counters, at each
    scrape: the call path's families under the names ``serve`` uses
    (:func:`~..server.metrics.server_families`), then the cluster's own."""

    def __init__(self, replicas: list[dict[str, Any]], counters: IngressCounters,
                 ingress: str) -> None:
        self.replicas, self.counters, self.ingress = replicas, counters, ingress

    def collect(self) -> Iterator[Metric]:
        reps = self.replicas
        yield GaugeMetricFamily("moshi_cluster_replicas", "Engine replicas reporting.",
                                value=len(reps))
        yield GaugeMetricFamily("moshi_cluster_free_slots", "Free call slots over all replicas.",
                                value=sum(int(r["free_slots"]) for r in reps))
        for name, family, help_, key in _PER_REPLICA:
            f = family(name, help_, labels=["replica"])
            for r in reps:
                f.add_metric([str(r["replica"])], int(r[key]))
            yield f
        tick = HistogramMetricFamily("moshi_engine_tick_seconds", "Time of one engine tick.",
                                     labels=["replica"])
        for r in reps:
            buckets = [(str(le), float(n)) for le, n in
                       zip(r["tick_bucket_bounds"], r["tick_buckets"], strict=False)]
            buckets.append(("+Inf", float(r["tick_count"])))
            tick.add_metric([str(r["replica"])], buckets, sum_value=float(r["tick_sum_s"]))
        yield tick
        for name, attr, help_ in TICK_QUANTILES:
            g = GaugeMetricFamily(name, help_, labels=["replica"])
            for r in reps:
                if r.get(attr) is not None:
                    g.add_metric([str(r["replica"])], float(r[attr]))
            yield g
        prompted = [r for r in reps if r.get("prompt")]  # PersonaPlex replicas (ADR 0130)
        for name, family, help_, attr in PROMPT_METRICS if prompted else ():
            f = family(name, help_, labels=["replica"])
            for r in prompted:
                f.add_metric([str(r["replica"])], float(r["prompt"][attr]))
            yield f
        yield from gc_families((((str(r["replica"]),), r["gc"]) for r in reps if r.get("gc")),
                               ["replica"])
        yield from server_families(self.counters, None)
        c, lab = self.counters, [self.ingress]
        for name, help_, value in (
                ("moshi_ingress_replica_failures", "Calls ended by a lost replica.",
                 c.replica_failures),
                ("moshi_ingress_routed", "Calls routed to a replica.", c.routed),
                ("moshi_ingress_calls_reaped",
                 "Calls closed for a limit (timeouts, message rate, audio ahead, malformed).",
                 c.calls_reaped),
                ("moshi_ingress_routing_seconds", "Time spent routing new calls.",
                 c.routing_seconds_sum)):
            f = CounterMetricFamily(name, help_, labels=["ingress"])
            f.add_metric(lab, value)
            yield f


_PER_REPLICA: tuple[tuple[str, Any, str, str], ...] = (
    ("moshi_engine_slots", GaugeMetricFamily, "Call slots in the replica's batch.", "slots"),
    ("moshi_engine_active_slots", GaugeMetricFamily, "Slots held by calls.", "active_slots"),
    ("moshi_engine_ticks", CounterMetricFamily, "Engine ticks run.", "ticks"),
    ("moshi_engine_late_ticks", CounterMetricFamily, "Ticks more than one period late.",
     "late_ticks"),
    ("moshi_engine_underruns", CounterMetricFamily, "Silence fills.", "underruns"),
    ("moshi_engine_overruns", CounterMetricFamily, "Input frames dropped.", "overruns"),
    ("moshi_engine_calls_started", CounterMetricFamily, "Calls given a slot.", "calls_started"),
)


def render(replicas: Iterable[dict[str, Any]], counters: IngressCounters, ingress: str) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IngressCollector(list(replicas), counters, ingress))
    return generate_latest(registry).decode()

"""The garbage collector's pauses as metric families (ADR 0150), torch-free: ``serve``'s
``/metrics`` and the cluster ingress's (labelled per replica) share them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["gc_families"]

#: name, family, help, field of :class:`~..engine.gc_pauses.GcPauseStats` (per generation).
_PER_GENERATION: tuple[tuple[str, type[CounterMetricFamily] | type[GaugeMetricFamily], str,
                             str], ...] = (
    ("moshi_process_gc_collections", CounterMetricFamily,
     "Garbage-collector runs, per generation.", "collections"),
    ("moshi_process_gc_pause_seconds", CounterMetricFamily,
     "Time the garbage collector held the interpreter (every thread waits), per generation.",
     "seconds"),
    ("moshi_process_gc_pause_max_seconds", GaugeMetricFamily,
     "Longest garbage-collector run so far, per generation; over 0.08 is a late tick.",
     "max_seconds"),
)


def gc_families(stats: Iterable[tuple[Sequence[str], Mapping[str, Any]]],
                labels: Sequence[str] = ()) -> Iterator[Metric]:
    """Families for each ``(label values, GcPauseStats as a dict)``; ``labels`` names the
    label values (the cluster's ``replica``; none for ``serve``)."""
    rows = list(stats)
    for name, family, help_, key in _PER_GENERATION:
        f = family(name, help_, labels=[*labels, "generation"])
        for values, s in rows:
            for gen, v in enumerate(s[key]):
                f.add_metric([*values, str(gen)], float(v))
        yield f
    g = GaugeMetricFamily("moshi_process_gc_frozen_objects",
                          "Objects frozen out of the collector's reach when the engine started.",
                          labels=list(labels))
    for values, s in rows:
        g.add_metric(list(values), float(s["frozen_objects"]))
    yield g

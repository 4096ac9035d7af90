"""Prometheus text for the cluster ingress: every engine replica's figures, labelled by
replica, plus this ingress's counters (labelled by ingress). Written by hand like
:mod:`voice_server_moshi.server.metrics`; no Ray and no torch here (the ingress does not
load the model: bucket bounds come with each replica's snapshot)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..server.limits import CloseReason
from ..server.metrics import ServerCounters

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


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(replicas: Iterable[dict[str, Any]], counters: IngressCounters, ingress: str) -> str:
    reps = list(replicas)
    lines: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")

    family("moshi_cluster_replicas", "gauge", "Engine replicas reporting.")
    lines.append(f"moshi_cluster_replicas {len(reps)}")
    family("moshi_cluster_free_slots", "gauge", "Free call slots over all replicas.")
    lines.append(f"moshi_cluster_free_slots {sum(int(r['free_slots']) for r in reps)}")
    per_replica = [
        ("moshi_engine_slots", "gauge", "Call slots in the replica's batch.", "slots"),
        ("moshi_engine_active_slots", "gauge", "Slots held by calls.", "active_slots"),
        ("moshi_engine_ticks_total", "counter", "Engine ticks run.", "ticks"),
        ("moshi_engine_late_ticks_total", "counter", "Ticks more than one period late.",
         "late_ticks"),
        ("moshi_engine_underruns_total", "counter", "Silence fills.", "underruns"),
        ("moshi_engine_overruns_total", "counter", "Input frames dropped.", "overruns"),
        ("moshi_engine_calls_started_total", "counter", "Calls given a slot.", "calls_started"),
    ]
    for name, kind, help_, key in per_replica:
        family(name, kind, help_)
        for r in reps:
            lines.append(f'{name}{{replica="{_esc(r["replica"])}"}} {int(r[key])}')
    family("moshi_engine_tick_seconds", "histogram", "Time of one engine tick.")
    for r in reps:
        lab = f'replica="{_esc(r["replica"])}"'
        for le, n in zip(r["tick_bucket_bounds"], r["tick_buckets"], strict=False):
            lines.append(f'moshi_engine_tick_seconds_bucket{{{lab},le="{le}"}} {int(n)}')
        lines.append(f'moshi_engine_tick_seconds_bucket{{{lab},le="+Inf"}} '
                     f'{int(r["tick_count"])}')
        lines.append(f"moshi_engine_tick_seconds_sum{{{lab}}} {float(r['tick_sum_s'])!r}")
        lines.append(f"moshi_engine_tick_seconds_count{{{lab}}} {int(r['tick_count'])}")
    lab = f'ingress="{_esc(ingress)}"'
    ingress_metrics = [
        ("moshi_ingress_connections_total", "counter", "WebSocket calls accepted.",
         counters.connections),
        ("moshi_ingress_active_calls", "gauge", "Calls relayed now.", counters.active_calls),
        ("moshi_server_refused_busy_total", "counter", "Calls refused with 0x05 + 1013.",
         counters.refused_busy),
        ("moshi_server_auth_failures_total", "counter", "Rejected tokens.",
         counters.auth_failures),
        ("moshi_ingress_protocol_errors_total", "counter", "Malformed caller messages.",
         counters.protocol_errors),
        ("moshi_ingress_audio_frames_out_total", "counter", "Audio messages sent.",
         counters.audio_frames_out),
        ("moshi_ingress_replica_failures_total", "counter", "Calls ended by a lost replica.",
         counters.replica_failures),
        ("moshi_ingress_routed_total", "counter", "Calls routed to a replica.", counters.routed),
        ("moshi_ingress_calls_reaped_total", "counter",
         "Calls closed for a limit (timeouts, message rate, audio ahead, malformed).",
         counters.calls_reaped),
        ("moshi_ingress_routing_seconds_sum", "counter", "Time spent routing new calls.",
         counters.routing_seconds_sum),
    ]
    for name, kind, help_, value in ingress_metrics:
        family(name, kind, help_)
        lines.append(f"{name}{{{lab}}} {value!r}" if isinstance(value, float)
                     else f"{name}{{{lab}}} {value}")
    return "\n".join(lines) + "\n"

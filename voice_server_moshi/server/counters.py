"""The call path's counters and their Prometheus families, torch-free: the front doors
that never load a model (the ingress workers, the cluster's ingress) count and export
them too (:mod:`.metrics` adds the engine's families for ``serve``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["ServerCounters", "server_families"]


@dataclass
class ServerCounters:
    """Server-side counters (updated on the event loop only)."""

    connections: int = 0
    active_connections: int = 0
    refused_busy: int = 0
    auth_failures: int = 0
    #: Requests answered 429 by the per-address failure limiter.
    auth_throttled: int = 0
    messages_in: int = 0
    protocol_errors: int = 0
    audio_frames_out: int = 0
    #: Calls ended, by reason (:class:`~.limits.CloseReason` values).
    closed: Counter[str] = field(default_factory=Counter)
    #: Seconds of caller audio counted before decoding, all calls.
    audio_in_s: float = 0.0


def server_families(c: ServerCounters, tick_thread_alive: bool | None) -> Iterator[Metric]:
    yield CounterMetricFamily("moshi_server_connections", "WebSocket calls accepted.",
                              value=c.connections)
    yield GaugeMetricFamily("moshi_server_active_connections", "Calls in progress.",
                            value=c.active_connections)
    yield CounterMetricFamily("moshi_server_refused_busy", "Calls answered with 'server busy'.",
                              value=c.refused_busy)
    yield CounterMetricFamily("moshi_server_auth_failures",
                              "Requests refused for a missing or wrong token.",
                              value=c.auth_failures)
    yield CounterMetricFamily("moshi_server_auth_throttled",
                              "Requests answered 429 after too many failures from an address.",
                              value=c.auth_throttled)
    yield CounterMetricFamily("moshi_server_messages_in", "Messages received.",
                              value=c.messages_in)
    yield CounterMetricFamily("moshi_server_protocol_errors",
                              "Malformed messages and undecodable audio.",
                              value=c.protocol_errors)
    yield CounterMetricFamily("moshi_server_audio_messages_out", "Audio messages sent.",
                              value=c.audio_frames_out)
    yield CounterMetricFamily("moshi_server_audio_in_seconds",
                              "Caller audio received, counted before decoding.",
                              value=c.audio_in_s)
    closed = CounterMetricFamily("moshi_server_calls_closed",
                                 "Calls ended, by reason (timeouts, limits, client, engine).",
                                 labels=["reason"])
    for reason, n in sorted(c.closed.items()):
        closed.add_metric([reason], n)
    yield closed
    if tick_thread_alive is not None:
        yield GaugeMetricFamily("moshi_engine_tick_thread_alive",
                                "1 while the engine's tick thread runs.",
                                value=float(tick_thread_alive))

"""Prometheus text exposition (format 0.0.4), written by hand: no client library needed."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.metrics import TICK_BUCKETS_S, EngineMetrics


@dataclass
class ServerCounters:
    """Server-side counters (updated on the event loop only)."""

    connections: int = 0
    active_connections: int = 0
    refused_busy: int = 0
    auth_failures: int = 0
    messages_in: int = 0
    protocol_errors: int = 0
    audio_frames_out: int = 0


def _fmt(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def render_metrics(m: EngineMetrics, c: ServerCounters) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, value: float) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {_fmt(value)}")

    metric("moshi_engine_slots", "gauge", "Call slots in the engine batch.", m.slots)
    metric("moshi_engine_active_slots", "gauge", "Slots held by calls.", m.active_slots)
    metric("moshi_engine_ready", "gauge", "1 when warmed up.", m.ready)
    metric("moshi_engine_ticks_total", "counter", "Ticks that ran the model.", m.ticks)
    metric("moshi_engine_late_ticks_total", "counter",
           "Times the tick loop fell more than one tick behind the wall clock.", m.late_ticks)
    metric("moshi_engine_underruns_total", "counter",
           "Silence frames fed to starved calls.", m.underruns)
    metric("moshi_engine_overruns_total", "counter",
           "Caller frames dropped from full input queues.", m.overruns)
    metric("moshi_engine_calls_started_total", "counter", "Calls given a slot.", m.calls_started)
    metric("moshi_engine_calls_refused_total", "counter",
           "Calls refused for want of a slot.", m.calls_refused)
    lines.append("# HELP moshi_engine_tick_seconds Time of one engine tick "
                 "(Mimi encode, LM step, Mimi decode for all slots).")
    lines.append("# TYPE moshi_engine_tick_seconds histogram")
    for le, count in zip(TICK_BUCKETS_S, m.tick_buckets, strict=True):
        lines.append(f'moshi_engine_tick_seconds_bucket{{le="{le}"}} {count}')
    lines.append(f'moshi_engine_tick_seconds_bucket{{le="+Inf"}} {m.tick_count}')
    lines.append(f"moshi_engine_tick_seconds_sum {_fmt(m.tick_sum_s)}")
    lines.append(f"moshi_engine_tick_seconds_count {m.tick_count}")
    metric("moshi_engine_state_bytes_per_slot", "gauge",
           "Streaming state (KV cache, conv buffers) per slot.", m.state_bytes_per_slot)
    metric("moshi_engine_weights_bytes", "gauge", "Model weights.", m.weights_bytes)
    if m.device_memory_bytes is not None:
        metric("moshi_engine_device_memory_bytes", "gauge",
               "GPU memory allocated by torch.", m.device_memory_bytes)
    if m.process_rss_bytes is not None:
        metric("process_resident_memory_bytes", "gauge", "Resident memory of the process.",
               m.process_rss_bytes)
    metric("moshi_server_connections_total", "counter", "WebSocket calls accepted.",
           c.connections)
    metric("moshi_server_active_connections", "gauge", "Calls in progress.",
           c.active_connections)
    metric("moshi_server_refused_busy_total", "counter",
           "Calls answered with 'server busy'.", c.refused_busy)
    metric("moshi_server_auth_failures_total", "counter",
           "Requests refused for a missing or wrong token.", c.auth_failures)
    metric("moshi_server_messages_in_total", "counter", "Messages received.", c.messages_in)
    metric("moshi_server_protocol_errors_total", "counter",
           "Malformed messages and undecodable audio.", c.protocol_errors)
    metric("moshi_server_audio_messages_out_total", "counter", "Audio messages sent.",
           c.audio_frames_out)
    return "\n".join(lines) + "\n"

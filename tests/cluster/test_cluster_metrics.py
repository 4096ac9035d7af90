"""The cluster ingress's /metrics from its replicas' reports (torch-free, no Ray)."""

from __future__ import annotations

from typing import Any

from voice_server_moshi.cluster.metrics import IngressCounters, render


def replica(name: str, p99: float | None) -> dict[str, Any]:
    return {"replica": name, "slots": 4, "active_slots": 1, "free_slots": 3, "ticks": 10,
            "late_ticks": 0, "underruns": 0, "overruns": 0, "calls_started": 1,
            "tick_p50_s": None if p99 is None else p99 / 2, "tick_p99_s": p99,
            "tick_count": 10, "tick_sum_s": 0.2, "tick_buckets": [10], "tick_bucket_bounds": [1.0]}


def test_each_replica_reports_its_recent_tick_quantiles() -> None:
    text = render([replica("r1", 0.03), replica("r2", None)], IngressCounters(), "ingress-1")
    lines = {ln for ln in text.splitlines() if ln.startswith("moshi_engine_tick_recent_")}
    assert 'moshi_engine_tick_recent_p99_seconds{replica="r1"} 0.03' in lines
    assert 'moshi_engine_tick_recent_p50_seconds{replica="r1"} 0.015' in lines
    assert not any('replica="r2"' in ln for ln in lines)  # no tick yet: no sample


def test_each_replica_reports_its_collector_pauses() -> None:
    r1 = replica("r1", 0.03) | {"gc": {"collections": [9, 3, 1], "seconds": [0.01, 0.01, 0.02],
                                       "max_seconds": [0.001, 0.004, 0.02],
                                       "frozen_objects": 150000}}
    text = render([r1, replica("r2", None)], IngressCounters(), "ingress-1")
    assert 'moshi_process_gc_pause_max_seconds{generation="2",replica="r1"} 0.02' in text
    assert 'moshi_process_gc_frozen_objects{replica="r1"} 150000.0' in text
    assert 'replica="r2"' not in "".join(ln for ln in text.splitlines() if "_gc_" in ln)

"""`serve`'s hint to split Opus and the protocol into ingress workers (ADR 0135)."""

from __future__ import annotations

from voice_server_moshi.server.cli import ONE_PROCESS_CALLS, ingress_hint


def test_no_hint_where_one_process_carries_the_calls_or_no_core_is_spare() -> None:
    assert ingress_hint(ONE_PROCESS_CALLS, 0, 64) is None  # the event loop carries them
    assert ingress_hint(200, 2, 64) is None  # already split
    assert ingress_hint(200, 0, 2) is None  # no core to spare for a worker
    assert ingress_hint(200, 0, None) is None


def test_the_hint_sizes_the_workers_by_calls_and_spare_cores() -> None:
    hint = ingress_hint(ONE_PROCESS_CALLS + 1, 0, 16)
    assert hint is not None and "--ingress-workers 2" in hint and "16 cores" in hint
    assert "--ingress-workers 2" in (ingress_hint(500, 0, 4) or "")  # 4 cores: 2 spare
    assert "--ingress-workers 3" in (ingress_hint(3 * ONE_PROCESS_CALLS, 0, 64) or "")

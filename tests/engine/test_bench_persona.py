"""``bench engine --persona`` measures a prompt cold and cached, and live calls beside a
cold prefill, in one run (dev-personaplex, CPU; numbers are the machine's, only their
presence and consistency are checked here)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.bench.persona import persona_bench
from voice_server_moshi.engine.models import load_models


@pytest.mark.slow
def test_persona_bench_reports_cold_cached_and_co_batched() -> None:
    models = load_models("dev-personaplex", device="cpu", dtype="float32")
    res = persona_bench(models, "Hi.", "NATM1", slots=2, seconds=0.5)
    assert res["voice"] == "NATM1"
    assert res["cold"]["steps"] > 12 and res["cold"]["wall_s"] > 0
    assert res["cached"]["restored"] is True and res["cached"]["state_bytes"] > 0
    co = res["co_batched"]
    assert co["live_calls"] == 1
    for window in ("without_newcomer", "with_cached_newcomer", "during_cold_prefill"):
        assert co[window]["ticks"] > 0
    assert co["prefill_wall_s_beside_live_calls"] is not None
    # The prefill's own cost: against the same newcomer with its prompt cached.
    assert co["tick_p99_ratio"] == pytest.approx(
        co["during_cold_prefill"]["tick_p99_ms"] / co["with_cached_newcomer"]["tick_p99_ms"],
        abs=0.01)
    assert co["tick_p99_ratio_vs_no_newcomer"] == pytest.approx(
        co["during_cold_prefill"]["tick_p99_ms"] / co["without_newcomer"]["tick_p99_ms"],
        abs=0.01)

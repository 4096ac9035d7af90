"""`bench fuzz`'s verdict on its canary call: judged on the canary's own frames and lag."""

from __future__ import annotations

from typing import Any

from voice_server_moshi.bench.fuzz import _verdict


def alone(p90: float, dropped: int = 0) -> dict[str, Any]:
    return {"engine_dropped_frames": dropped, "lag_ms": {"p90": p90}}


def during(answered: int, p90: float, **kw: Any) -> dict[str, Any]:
    return {"frames_sent": 1000, "frames_answered": answered, "lag_ms": {"p90": p90},
            "error": None, "closed_by_server": False,
            "engine_dropped_frames_during_fuzz": 2443} | kw


def test_the_fuzzers_own_dropped_frames_do_not_count_against_the_canary() -> None:
    # 998 of 1000: Moshi's first frame and a short last one; the engine dropped the fuzzing
    # connections' floods meanwhile.
    assert _verdict(alone(51), alone(104), during(998, 175))["within_promise"] is True


def test_a_canary_that_lost_frames_lagged_or_was_closed_is_affected() -> None:
    assert _verdict(alone(51), alone(104), during(990, 175))["within_promise"] is False
    assert _verdict(alone(51), alone(104), during(998, 185))["within_promise"] is False
    closed = during(998, 100, closed_by_server=True)
    assert _verdict(alone(51), alone(104), closed)["within_promise"] is False
    # The no-input close after the canary stopped talking is not an error.
    quiet = during(998, 100, error="no audio for 10 s; closing the call")
    assert _verdict(alone(51), alone(104), quiet)["within_promise"] is True


def test_no_verdict_where_the_canary_alone_was_not_real_time() -> None:
    assert _verdict(alone(51, dropped=3), alone(104), during(998, 100))["within_promise"] is None
    assert _verdict(alone(700), alone(104), during(998, 100))["within_promise"] is None

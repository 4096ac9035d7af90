"""`bench serve-persona` against a real `serve --checkpoint dev-personaplex` (CPU): its JSON
says how a cached persona's start compares with a plain call's, and what a cold prefill
does to co-batched calls."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")
pytest.importorskip("sphn")

from voice_server_moshi.bench import serve_persona as bench


@pytest.mark.slow
def test_bench_serve_persona_reports_start_and_co_batched(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--rounds", "1", "--calls", "1", "--seconds", "1.2", "--slots", "2"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text[text.index('{\n  "bench"'):])
    start = out["start"]
    for name in ("plain", "cached_persona"):
        [call] = start["calls"][name]
        assert call["error"] is None and call["connect_ms"] > 0 and call["first_audio_ms"] > 0
    assert set(start["cached_minus_plain_ticks"]) == {"connect_ms", "first_audio_ms"}
    [pair] = out["co_batched"]["pairs"]
    cached, cold = pair["with_cached_newcomer"], pair["with_cold_prefill"]
    # The cold newcomer's handshake waited for its prefill; the cached one's did not.
    assert cold["newcomer_connect_ms"] > cached["newcomer_connect_ms"]
    for window in ("with_cached_newcomer", "with_cold_prefill"):  # each on its own fresh serve
        # p99 of that window's ticks only: not below their mean
        assert pair[window]["serve_tick_p99_ms"] >= pair[window]["serve_tick_mean_ms"] * 0.9
    for m in ("serve_tick_p99_ms", "serve_tick_mean_ms", "lag_p99_ms"):
        assert pair[f"{m}_ratio"] > 0 and out["co_batched"]["median_ratios"][f"{m}_ratio"] > 0

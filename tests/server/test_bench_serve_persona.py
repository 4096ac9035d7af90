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
    cb = out["co_batched"]
    assert cb["without_prefill"]["cold_call_connect_ms"] is None
    assert cb["with_cold_prefill"]["cold_call_connect_ms"] > 0  # waited for its prefill
    assert cb["lag_p99_ratio"] > 0 and cb["serve_tick_mean_ratio"] > 0

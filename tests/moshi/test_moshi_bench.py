"""`bench adapter` runs the adapter's whole path and accounts for every frame (no speed
assertion: the number is measured and reported, not asserted)."""

from __future__ import annotations

import json

import pytest

from voice_server_moshi.bench import adapter as bench


def test_bench_adapter_reports_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--seconds", "2", "--repeat", "1"]) == 0
    text = capsys.readouterr().out
    # structlog (unconfigured in tests) may print log lines before the JSON on stdout.
    out = json.loads(text[text.index('{\n  "bench"') :])
    run = out["last_run"]
    # 2 s of caller audio: 25 Moshi frames out and back, 100 chunks of 20 ms to the host.
    assert run["frames_sent"] == run["frames_received"] == 25
    assert run["chunks_out"] == 100 and run["silence_frames"] == 0
    assert out["cpu_ms_per_call_second"] > 0
    assert out["calls_per_core_realtime"] == pytest.approx(
        1000 / out["cpu_ms_per_call_second"], rel=0.01
    )
    assert set(out["stages_cpu_ms_per_call_second"]) >= {"opus_encode", "opus_decode", "vad"}
    sock = out["with_socket"]["last_run"]
    assert sock["frames_sent"] == sock["frames_received"] == 25

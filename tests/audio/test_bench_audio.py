"""The `bench audio` / `bench vad` commands: JSON out, goals computed from measurements."""

from __future__ import annotations

import json

import pytest

from voice_server_moshi import cli
from voice_server_moshi.bench import vad as bench_vad


def test_bench_audio_prints_json_with_both_directions_and_soxr(capsys) -> None:
    assert cli.main(["bench", "audio", "--step-hz", "200", "--calls", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    for direction in ("up_8k_to_24k", "down_24k_to_8k"):
        row = out["resampler"][direction]
        assert set(row) == {"ours", "soxr_hq", "soxr_vhq"}
        # soxr withholds its delay; ours withholds nothing (measured, not declared)
        assert row["soxr_hq"]["withheld_ms"] > 10 * row["ours"]["latency_ms"]
        assert row["ours"]["withheld_max_ms"] <= 0.0
        assert row["ours"]["cpu_us_per_20ms_frame"] > 0
    assert all(out["goals_met"].values()), out["goals_met"]
    assert out["round_trip_latency_ms"]["ours"] < out["round_trip_latency_ms"]["soxr_hq"]


def test_bench_vad_says_what_is_missing_without_espeak(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_vad.shutil, "which", lambda name: None)
    assert cli.main(["bench", "vad"]) == 2
    err = capsys.readouterr().err
    assert "espeak-ng not found" in err and "apt-get install espeak-ng" in err


@pytest.mark.slow
def test_bench_vad_meets_the_onset_goal_at_20db(capsys) -> None:
    if bench_vad.shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    assert cli.main(["bench", "vad", "--no-silero"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]["20dB"]
    for noise in ("white", "pink"):
        energy = res[noise]["energy"]
        assert energy["misses"] == 0 and energy["onset_delay_ms"]["p90"] <= 150

"""``bench steering`` on the dev checkpoint (plumbing; real weights are not reachable here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voice_server_moshi.bench.steering import wer
from voice_server_moshi.cli import main as cli_main


def test_word_error_rate() -> None:
    assert wer(["a", "b", "c"], ["a", "b", "c"]) == 0.0
    assert wer(["a", "b", "c"], ["a", "c"]) == pytest.approx(1 / 3)
    assert wer(["a", "b"], ["x", "a", "b", "y"]) == 1.0
    assert wer([], []) == 0.0


@pytest.mark.slow
def test_bench_steering_reports_text_match(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    pytest.importorskip("moshi")
    lines = tmp_path / "lines.txt"
    lines.write_text("hello there, this is a test\nthank you\n")
    assert cli_main(["bench", "steering", "--calls", "2", "--seconds", "4.5",
                     "--device", "cpu", "--lines", str(lines)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "steering" and out["text_match_rate"] == 1.0
    assert out["stt_mean_wer"] is None and out["stt"].startswith("not measured")
    for call in out["per_call"]:
        assert call["text_match"] and call["first_token_steps"] <= 1 and call["frames"] > 0

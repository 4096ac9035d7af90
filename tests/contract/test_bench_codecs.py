import json

import pytest

from voice_server_moshi.bench import codecs


def test_opus_figures_are_measured(capsys: pytest.CaptureFixture[str]) -> None:
    assert codecs.main(["--frames", "5", "--skip-mimi"]) == 0
    out = json.loads(capsys.readouterr().out)
    enc = out["opus_sphn_24k"]["encode"]
    assert enc["p50_ms"] > 0 and enc["realtime_fraction"] == pytest.approx(
        enc["mean_ms"] / 80.0, abs=1e-3
    )
    assert "mimi_full_size_cpu" not in out

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


def test_each_opus_encoder_is_measured_on_the_same_audio(
        capsys: pytest.CaptureFixture[str]) -> None:
    from voice_server_moshi.audio.opus import default_backend

    pytest.importorskip("pesq", reason="PESQ comes with the dev extra")
    assert codecs.main(["--frames", "5", "--skip-mimi"]) == 0
    out = json.loads(capsys.readouterr().out)["opus_encoders"]
    assert out["serve_uses"] == default_backend()
    backends = ["sphn"] + (["libopus"] if default_backend() == "libopus" else [])
    assert [b for b in ("sphn", "libopus") if b in out] == backends
    for b in backends:
        speech, noise = out[b]["speech"], out[b]["noise"]
        assert speech["encode"]["p50_ms"] > 0 and noise["encode"]["p50_ms"] > 0
        assert 10 < speech["kbps"] < 80 and 10 < noise["kbps"] < 80
        # PESQ of the corpus's phone speech through the codec and back: 1 (bad) to 4.5.
        assert 3.5 < speech["pesq_nb"] <= 4.65
    if "libopus" in out:
        assert out["libopus"]["complexity"] == 5 and out["libopus"]["bitrate_bps"] == 40000

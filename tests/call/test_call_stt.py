"""``call --config`` with ``[moshi] stt = "dev"``: caller words in the timeline and picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.audio.wavio import read_wav, write_wav_pcm16
from voice_server_moshi.bundled import bundled_clip_dir
from voice_server_moshi.cli import main as cli_main
from voice_server_moshi.engine.devstt import DELAY_FRAMES


@pytest.mark.slow
def test_call_with_the_dev_stt_shows_caller_words(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    clip = read_wav(bundled_clip_dir() / "u1.wav")
    assert clip.sample_rate == 8000
    lead, speech = 1.0, clip.samples[:, 0]
    x = np.concatenate([np.zeros(int(8000 * lead), np.float32), speech,
                        np.zeros(4000, np.float32)])
    write_wav_pcm16(tmp_path / "in.wav", x, 8000)
    (tmp_path / "cfg.toml").write_text('[moshi]\nstt = "dev"\n')
    rc = cli_main(["call", str(tmp_path / "in.wav"), "--config", str(tmp_path / "cfg.toml"),
                   "--clock", "virtual", "--tail-ms", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "caller words" in err
    timeline = json.loads((tmp_path / "o" / "timeline.json").read_text())
    cbs = [r for r in timeline if r["kind"] == "callback"]
    caller = [r for r in cbs if r["name"] == "transcript" and r["role"] == "caller"]
    assert any(r["final"] for r in caller)
    # The full-duplex mode hands them to on_transcript at call time: within the caller's
    # speech plus the STT's delay (and a few frames of pipeline), never before it.
    speech_end_ms = 1000 * (lead + len(speech) / 8000)
    delay_ms = DELAY_FRAMES * 80
    for r in caller:
        assert 1000 * lead <= r["t_ms"] <= speech_end_ms + delay_ms + 800, r
    # ... and before disconnected, the last record.
    assert cbs[-1]["name"] == "disconnected"
    assert max(i for i, r in enumerate(cbs) if r in caller) < len(cbs) - 1
    assert (tmp_path / "o" / "call.png").stat().st_size > 30_000

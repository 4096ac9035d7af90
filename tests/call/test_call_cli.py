"""``voice-server-moshi call``: outputs, bad input, and the embedded default."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from voice_server_moshi.audio.wavio import read_wav, write_wav_pcm16
from voice_server_moshi.cli import main as cli_main


def test_scripted_call_writes_every_output(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = cli_main(["call", "--scripted-agent", "--clock", "virtual", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "bundled sample call" in err and "[call]" in err
    agent = read_wav(out / "agent.wav")
    call = read_wav(out / "call.wav")
    caller = read_wav(out / "caller-input.wav")
    assert agent.sample_rate == call.sample_rate == 8000 and call.channels == 2
    assert abs(call.duration_s - caller.duration_s - 2.0) < 0.1  # plus the 2 s tail
    # Left is the caller as sent (µ-law round trip), right is the agent track.
    n = len(caller.samples)
    assert np.max(np.abs(call.samples[:n, 0] - caller.mono())) < 0.05
    assert np.array_equal(call.samples[:, 1], agent.mono())
    timeline = json.loads((out / "timeline.json").read_text())
    assert all({"t_ms", "name"} <= set(r) for r in timeline)
    names = [r["name"] for r in timeline if r["kind"] == "callback"]
    assert {"user-turn-started", "user-turn-ended", "agent-turn-started", "agent-turn-ended",
            "transcript", "disconnected"} <= set(names)
    assert names[-1] == "disconnected" and names.count("disconnected") == 1
    call_ms = call.duration_s * 1000
    assert all(0 <= r["t_ms"] <= call_ms + 1 for r in timeline)
    lat = json.loads((out / "latency.json").read_text())
    assert lat["stages_ms"]["resampler_in"]["designed"] < 5
    assert lat["stages_ms"]["playout_buffer"]["underruns"] == 0
    assert lat["first_agent_audio_after_caller_turn_end_ms"]["n"] >= 1
    png = (out / "call.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000


def test_a_user_wav_at_another_rate(tmp_path: Path) -> None:
    x = np.zeros((16000 * 3, 2), dtype=np.float32)
    x[16000:32000, :] = 0.3 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)[:, None]
    write_wav_pcm16(tmp_path / "in.wav", x, 16000)
    rc = cli_main(["call", str(tmp_path / "in.wav"), "--scripted-agent", "--clock", "virtual",
                   "--out", str(tmp_path / "o"), "--tail-ms", "200", "--no-plot"])
    assert rc == 0
    with wave.open(str(tmp_path / "o" / "call.wav")) as w:
        assert w.getframerate() == 8000 and w.getnchannels() == 2
        assert abs(w.getnframes() - 8000 * 3.2) < 200
    assert not (tmp_path / "o" / "call.png").exists()


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.wav").write_bytes(b"hello")
    assert cli_main(["call", str(tmp_path / "x.wav"), "--out", str(tmp_path / "o")]) == 2
    assert "not a WAV file" in capsys.readouterr().err
    assert cli_main(["call", "--checkpoint", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli_main(["call", "--url", "http://x", "--out", str(tmp_path / "o")]) == 2
    assert "ws://" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from voice_server_moshi.testing.moshi_server import free_port

    url = f"ws://127.0.0.1:{free_port()}/api/chat"
    assert cli_main(["call", "--url", url, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "could not start the call" in err and url in err


@pytest.mark.slow
def test_default_call_runs_on_the_embedded_dev_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.zeros(8000 * 3, dtype=np.float32)
    x[8000:16000] = 0.3 * np.sin(2 * np.pi * 300 * np.arange(8000) / 8000)
    write_wav_pcm16(tmp_path / "in.wav", x, 8000)
    rc = cli_main(["call", str(tmp_path / "in.wav"), "--clock", "virtual", "--tail-ms", "500",
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "dev checkpoint" in err and "babbles" in err
    assert "[call] dev checkpoint: " in err or "generating the dev checkpoint into" in err
    lat = json.loads((tmp_path / "o" / "latency.json").read_text())
    assert lat["transport"] == "embedded"
    assert lat["stages_ms"]["transport_and_engine_step"]["n"] > 0
    timeline = json.loads((tmp_path / "o" / "timeline.json").read_text())
    assert [r["name"] for r in timeline if r["kind"] == "callback"][-1] == "disconnected"

"""What a new user of ``call`` runs into: a missing picture library, an unreachable hub,
where the dev checkpoint comes from."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from voice_server_moshi.audio.wavio import write_wav_pcm16
from voice_server_moshi.call import main as call_main
from voice_server_moshi.cli import main as cli_main
from voice_server_moshi.testing.moshi_server import free_port


def _wav(tmp_path: Path, seconds: float = 1.5) -> str:
    x = np.zeros(int(8000 * seconds), dtype=np.float32)
    x[2000:8000] = 0.3 * np.sin(2 * np.pi * 300 * np.arange(6000) / 8000)
    write_wav_pcm16(tmp_path / "in.wav", x, 8000)
    return str(tmp_path / "in.wav")


def test_without_matplotlib_every_output_but_the_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "o"
    rc = cli_main(["call", _wav(tmp_path), "--scripted-agent", "--tail-ms", "200",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "no picture" in err and "pip install 'voice-server-moshi[plot]'" in err
    assert "Traceback" not in err
    assert {p.name for p in out.iterdir()} >= {"agent.wav", "call.wav", "timeline.json",
                                               "latency.json"}
    assert not (out / "call.png").exists()


def test_unreachable_hub_fails_fast_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("moshi")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    t0 = time.monotonic()
    rc = cli_main(["call", _wav(tmp_path), "--hf-repo", "kyutai/moshiko-pytorch-bf16",
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and time.monotonic() - t0 < 20
    assert "cannot reach the Hugging Face hub" in err and "--checkpoint DIR" in err
    assert "HF_HUB_OFFLINE=1" in err and "Assuming this is a Moshi 7B" not in err


def test_offline_hub_without_a_cached_copy_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("moshi")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    rc = cli_main(["call", _wav(tmp_path), "--hf-repo", "nobody/no-such-moshi",
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "not in the Hugging Face cache" in err and "--checkpoint DIR" in err


def test_call_says_when_and_where_it_generates_the_dev_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = pytest.importorskip("voice_server_moshi.engine.checkpoints")
    made: list[Path] = []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(checkpoints, "dev_checkpoint_ready", lambda: bool(made))
    monkeypatch.setattr(checkpoints, "dev_checkpoint_dir",
                        lambda: made.append(tmp_path / "ck") or tmp_path / "ck")
    call_main._prepare_dev_checkpoint()
    err = capsys.readouterr().err
    assert f"generating the dev checkpoint into {tmp_path / 'voice-server-moshi'}" in err
    assert "first run only" in err and f"written to {tmp_path / 'ck'}" in err
    call_main._prepare_dev_checkpoint()  # the next run: where it is, nothing generated
    assert capsys.readouterr().err == f"[call] dev checkpoint: {tmp_path / 'ck'}\n"
    assert len(made) == 2

"""``call --say MS:TEXT``: the agent says scripted lines, and the picture shows them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voice_server_moshi.audio.wavio import write_wav_pcm16
from voice_server_moshi.call.plot import steered_spans
from voice_server_moshi.cli import main as cli_main
from voice_server_moshi.host.recorder import Record


@pytest.mark.slow
def test_call_say_on_the_embedded_engine(tmp_path: Path, dev_checkpoint: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "in.wav"
    write_wav_pcm16(wav, np.zeros(8000, dtype=np.float32), 8000)
    out = tmp_path / "o"
    rc = cli_main(["call", str(wav), "--checkpoint", str(dev_checkpoint), "--device", "cpu",
                   "--clock", "virtual", "--tail-ms", "2500", "--out", str(out),
                   "--say", "400:hello there"])
    assert rc == 0, capsys.readouterr().err
    timeline = json.loads((out / "timeline.json").read_text())
    cbs = [r for r in timeline if r["kind"] == "callback"]
    ask = next(r for r in cbs if r["name"] == "say-request")
    assert ask["text"] == "hello there" and ask["t_ms"] >= 400
    statuses = [r["status"] for r in cbs if r["name"] == "agent-steering"]
    assert statuses == ["queued", "started", "finished"]
    words = [r["text"] for r in cbs if r["name"] == "transcript" and r["final"]
             and r["t_ms"] >= ask["t_ms"]]
    assert "hello" in words and words.index("there") == words.index("hello") + 1
    records = [Record(r["t_ms"], r["name"], r["kind"], r["wall_ms"],
                      {k: v for k, v in r.items()
                       if k not in ("t_ms", "name", "kind", "wall_ms")}) for r in cbs]
    spans = steered_spans(records, 3.5)
    assert len(spans) == 1 and spans[0][2] == "hello there" and spans[0][0] < spans[0][1]
    assert (out / "call.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_say_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("hello", "x:hello", "-5:hi", "300:  "):
        with pytest.raises(SystemExit) as exc:
            cli_main(["call", "--scripted-agent", f"--say={bad}"])
        assert exc.value.code == 2
        assert "--say takes MS:TEXT" in capsys.readouterr().err


def test_say_to_an_agent_that_cannot_be_steered_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "o"
    rc = cli_main(["call", "--scripted-agent", "--clock", "virtual", "--no-plot",
                   "--out", str(out), "--tail-ms", "200", "--say", "100:hi"])
    assert rc == 0  # a non-fatal error: the call goes on
    timeline = json.loads((out / "timeline.json").read_text())
    errors = [r for r in timeline if r["name"] == "error" and r["kind"] == "callback"]
    assert errors and errors[0]["code"] == "steering_unsupported"
    assert "cannot be steered" in errors[0]["message"]

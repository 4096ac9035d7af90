"""The default ``call`` is deterministic: same input and settings, same turns and counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from voice_server_moshi.audio.wavio import write_wav_pcm16
from voice_server_moshi.corpus.sample import sample_call


def _call(wav: Path, out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    # A fresh process per run, as a user runs it; nothing but the input and the defaults.
    proc = subprocess.run(
        [sys.executable, "-m", "voice_server_moshi.cli", "call", str(wav), "--no-plot",
         "--tail-ms", "500", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    timeline = json.loads((out / "timeline.json").read_text())
    latency = json.loads((out / "latency.json").read_text())
    turns = [{k: v for k, v in r.items() if k != "wall_ms"}  # wall time is the machine's
             for r in timeline if r["kind"] == "callback"]
    counts = {"mode": latency["mode_counters"], "adapter": latency["adapter_counters"],
              "timeouts": latency["virtual_clock_settle_timeouts"]}
    return turns, counts


@pytest.mark.slow
def test_two_default_calls_give_the_same_turns_and_counts(tmp_path: Path) -> None:
    sample = sample_call()
    # The first 3.5 s: a caller turn (0.8-2.8 s) while the dev agent babbles.
    write_wav_pcm16(tmp_path / "in.wav", sample.caller[: 8000 * 7 // 2], 8000)
    turns1, counts1 = _call(tmp_path / "in.wav", tmp_path / "a")
    turns2, counts2 = _call(tmp_path / "in.wav", tmp_path / "b")
    names = [t["name"] for t in turns1]
    assert "user-turn-started" in names and "agent-turn-started" in names
    assert "transcript" in names  # the dev agent's sampled text is part of what must repeat
    assert turns1 == turns2
    assert counts1 == counts2
    ts = [t["t_ms"] for t in json.loads((tmp_path / "a" / "timeline.json").read_text())]
    assert ts == sorted(ts)  # timeline.json is in call-time order

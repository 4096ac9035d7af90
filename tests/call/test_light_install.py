"""The light install (no extras: no torch, no matplotlib) runs a remote ``call`` to the end.

A real virtualenv with ``pip install -e <repo>`` and nothing else (cached per checkout and
pyproject.toml under ~/.cache/voice-server-moshi/); ``serve`` runs from the full dev
environment, as the Moshi server a light voice-server talks to would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voice_server_moshi.audio.wavio import write_wav_pcm16

ROOT = Path(__file__).resolve().parents[2]


def _light_venv() -> Path:
    key = hashlib.sha256(str(ROOT).encode() + (ROOT / "pyproject.toml").read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = base / "voice-server-moshi" / f"light-venv-{key.hexdigest()[:12]}"
    done = venv / ".installed"
    if done.exists():
        return venv
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                   timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", "-e", str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"pip could not install the light package here: {pip.stderr[-500:]}")
    done.write_text("ok\n")
    return venv


@pytest.fixture(scope="module")
def serve_url(dev_checkpoint: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_server_moshi.cli", "serve", "--port", "0", "--slots",
         "1", "--checkpoint", str(dev_checkpoint), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=180)
    try:
        if not line or not line[0]:
            pytest.fail("serve did not start within 180 s")
        yield str(json.loads(line[0])["url"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_light_install_runs_a_remote_call_to_the_end(serve_url: str, tmp_path: Path) -> None:
    venv = _light_venv()
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in "
                            "('torch', 'matplotlib', 'moshi') if u.find_spec(m)])"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr  # really light
    x = np.zeros(8000 * 2, dtype=np.float32)
    x[4000:12000] = 0.3 * np.sin(2 * np.pi * 300 * np.arange(8000) / 8000)
    write_wav_pcm16(tmp_path / "in.wav", x, 8000)
    out = tmp_path / "out"
    run = subprocess.run(
        [str(venv / "bin" / "voice-server-moshi"), "call", str(tmp_path / "in.wav"), "--url",
         serve_url, "--tail-ms", "300", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "voice-server-moshi[plot]" in run.stderr  # says how to get the picture
    for name in ("agent.wav", "call.wav", "timeline.json", "latency.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "call.png").exists()
    assert json.loads((out / "latency.json").read_text())["transport"] == "remote"

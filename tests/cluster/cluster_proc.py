"""`voice-server-moshi cluster` as the tests start it: its own process, its listening line
read with a deadline, and a clean stop (Ctrl-C) that must exit 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@contextlib.contextmanager
def cluster_process(args: list[str], log_path: Path,
                    start_s: float = 300) -> Iterator[tuple[dict[str, Any],
                                                             subprocess.Popen[str]]]:
    """Start `cluster` with ``args`` (stderr to ``log_path``); yields its listening line
    and the process (stdin open for console commands)."""
    log_file = open(log_path, "w")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_server_moshi.cli", "cluster", *args],
        env=dict(os.environ, HF_HUB_OFFLINE="1"), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=log_file, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=start_s)
    try:
        if not line or not line[0]:
            pytest.fail(f"cluster did not print its listening line within {start_s:g} s; "
                        "stderr:\n" + log_path.read_text()[-3000:])
        info = json.loads(line[0])
        assert info["event"] == "listening", line[0]
        yield info, proc
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: a clean stop
        try:
            assert proc.wait(timeout=60) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            log_file.close()

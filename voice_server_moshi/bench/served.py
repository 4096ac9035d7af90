"""A real ``serve`` process for the long-running benchmarks (``bench fuzz``, ``bench soak``):
start it with its log in a file, sample what it holds (resident memory, open file
descriptors, threads, slots, the tick histogram) from ``/proc`` and its own ``/metrics``
and ``/capacity``, scan its log for unhandled errors, and fit a line through samples."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np

from ..engine.metrics import TICK_BUCKETS_S
from .cluster import _start, _stop

__all__ = [
    "Served",
    "add_common_flags",
    "fit",
    "metric_values",
    "process_stats",
    "scan_log",
    "tick_quantile",
    "write_json",
]

#: What counts as an unhandled error in serve's log: a traceback, or a line logged at
#: error level or above (serve logs a call's expected endings at info or warning).
_BAD_LINE = re.compile(r"Traceback|\[(error|critical)\s*\]|\blevel=(error|critical)\b|"
                       r"\"level\": ?\"(error|critical)\"|exception was never retrieved",
                       re.IGNORECASE)


def process_stats(pid: int) -> dict[str, float]:
    """Resident memory (MB), open file descriptors and threads of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"])}


def metric_values(text: str) -> dict[str, float]:
    """A Prometheus text page as ``{"name{labels}": value}`` (comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def tick_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """The ``q`` quantile of engine ticks between two ``/metrics`` pages, in ms: the upper
    edge of the histogram bucket it falls in; beyond the last bucket (1 s), twice that
    edge, read "over 1 s"; None when no tick ran."""
    def counts(m: dict[str, float]) -> list[float]:
        return [m.get(f'moshi_engine_tick_seconds_bucket{{le="{le}"}}', 0.0)
                for le in TICK_BUCKETS_S]

    total = (after.get('moshi_engine_tick_seconds_bucket{le="+Inf"}', 0.0)
             - before.get('moshi_engine_tick_seconds_bucket{le="+Inf"}', 0.0))
    if total <= 0:
        return None
    for le, a, b in zip(TICK_BUCKETS_S, counts(after), counts(before), strict=True):
        if a - b >= q * total:
            return le * 1000
    return TICK_BUCKETS_S[-1] * 2000


def fit(xs: list[float], ys: list[float]) -> dict[str, float | None]:
    """Least-squares line through (x, y): slope, intercept, and the rise over the x range."""
    if len(xs) < 3:
        return {"slope": None, "intercept": None, "rise": None}
    slope, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    return {"slope": round(float(slope), 4), "intercept": round(float(intercept), 2),
            "rise": round(float(slope) * (max(xs) - min(xs)), 2)}


def scan_log(path: Path, limit: int = 5) -> dict[str, Any]:
    """Lines of serve's log that show an unhandled error: their count and the first few."""
    bad = [line.strip()[:400] for line in path.read_text(errors="replace").splitlines()
           if _BAD_LINE.search(line)]
    return {"lines": sum(1 for _ in path.open(errors="replace")), "errors": len(bad),
            "first": bad[:limit]}


class Served:
    """``voice-server-moshi serve`` as a child process, its log under ``log_path``."""

    def __init__(self, args: list[str], log_path: Path, *, start_timeout_s: float = 300) -> None:
        self.log_path = log_path
        self._log: TextIO = log_path.open("w")
        cmd = [sys.executable, "-m", "voice_server_moshi.cli", "--log-level", "info", "serve",
               "--port", "0", *args]
        self.proc, info = _start(cmd, start_timeout_s, stderr=self._log)
        self.port = int(info["port"])
        self.url = f"ws://127.0.0.1:{self.port}/api/chat"
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", trust_env=False,
                                 timeout=10)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.http.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve not ready after {timeout_s} s")
            time.sleep(0.2)

    def stats(self) -> dict[str, float]:
        return process_stats(self.proc.pid)

    def capacity(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get("/capacity").json()
        return result

    def metrics(self) -> dict[str, float]:
        return metric_values(self.http.get("/metrics").text)

    def wait_free(self, timeout_s: float = 15) -> int:
        """Wait until every slot is free again; the free slots at the end."""
        deadline = time.monotonic() + timeout_s
        cap = self.capacity()
        while cap["free_slots"] < cap["slots"] and time.monotonic() < deadline:
            time.sleep(0.1)
            cap = self.capacity()
        return int(cap["free_slots"])

    def stop(self) -> dict[str, Any]:
        """Stop serve (SIGINT, as an operator would); its exit code and log scan."""
        self.http.close()
        _stop(self.proc)
        self._log.close()
        return {"exit_code": self.proc.returncode, "log": scan_log(self.log_path)}


def add_common_flags(p: argparse.ArgumentParser, out_example: str) -> None:
    """The flags ``bench fuzz`` and ``bench soak`` share."""
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--checkpoint", default="dev")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help=f"also write the JSON here ({out_example})")


def write_json(result: dict[str, Any], out: str | None) -> None:
    """Print ``result`` on stdout, and write it to ``out`` (folders made) if given."""
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


"""Where the ingress learns what every engine replica holds: a tiny named Ray actor.

Each engine replica reports a snapshot (free slots, ticks, its data-plane URL) every
``REPORT_PERIOD_S``; entries not refreshed within ``ttl_s`` are dropped, so a dead replica
disappears by itself. The ingress reads it for admission (refuse at once when nothing is
free) and for the aggregated ``/capacity``, ``/readyz`` and ``/metrics``. Ray Serve's own
router still picks the replica for each call (``max_ongoing_requests`` = slots); this is
only the read side that Serve does not expose.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ray

NAMESPACE = "voice-server-moshi"
REPORT_PERIOD_S = 0.5
DEFAULT_TTL_S = 2.0


class Directory:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, dict[str, Any]] = {}

    def report(self, snapshot: dict[str, Any]) -> None:
        self._entries[str(snapshot["replica"])] = {**snapshot, "seen": time.monotonic()}

    def remove(self, replica: str) -> None:
        self._entries.pop(replica, None)

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._entries = {k: v for k, v in self._entries.items() if now - v["seen"] <= self.ttl_s}
        return sorted((dict(v, age_s=round(now - v["seen"], 3)) for v in self._entries.values()),
                      key=lambda e: str(e["replica"]))


def directory_name(app_name: str) -> str:
    return f"vsm-directory:{app_name}"


def get_directory(app_name: str) -> Any:
    """The app's directory actor, created on first use (detached: it outlives replicas;
    restarted by Ray if it dies, and refilled by the next reports)."""
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Directory)
    return actor.options(
        name=directory_name(app_name), namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True,
    ).remote()


def kill_directory(app_name: str) -> None:
    """Remove the app's directory actor (after ``serve.delete``); quiet if absent."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(directory_name(app_name), namespace=NAMESPACE))

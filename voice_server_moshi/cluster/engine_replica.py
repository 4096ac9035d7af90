"""The engine replica: one batched engine on one device, leased one call at a time.

Each call holds one *lease*, a streaming Serve request that lasts as long as the call.
That one choice lets Ray Serve do the distributed work it already does well:

* routing: with ``max_ongoing_requests`` = slots, Serve's router sends a lease only to a
  replica with a free slot (a full replica rejects it and the router tries another);
* autoscaling: ongoing requests are active calls, so ``target_ongoing_requests`` is a
  target of calls per replica;
* draining: a replica being removed (scale-down, redeploy) gets no new lease and is only
  stopped when its ongoing leases end or ``graceful_shutdown_timeout_s`` (the drain limit)
  runs out, so a deploy cuts no call;
* failover: a dead replica fails its leases at once, Serve's health check replaces it.

The call's audio does not travel over the lease: the lease's first item is the URL of
this replica's data plane (:mod:`.engine_side`) and a one-time ticket for the reserved
slot; PCM then flows over a direct WebSocket, one hop, no per-frame Ray task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from .._log import get_logger
from ..callpath.kinds import CallParams
from ..engine.persona import PersonaError
from ..engine.spec import EngineSpec
from . import directory

__all__ = ["EngineReplica", "EngineSpec"]

log = get_logger(__name__)


class EngineReplica:
    """Serve deployment class (wrapped with ``serve.deployment`` in :mod:`.app`)."""

    def __init__(self, spec: EngineSpec, app_name: str) -> None:
        from .engine_side import EngineDataServer

        self.spec = spec
        # Two hops (caller -> ingress -> replica) deliver frames with more jitter than
        # serve's one: a standing queue of 2 is that jitter, not a stall (ADR 0065).
        self.engine = spec.build(target_frames=2)
        self.engine.start()
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use): any stable name
            self.replica = f"engine-{os.getpid()}"
        self.host = str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        self.data = EngineDataServer(self.engine, self.host,
                                     max_queued_outputs=spec.max_queued_outputs)
        self.data.start()
        self._directory = directory.get_directory(app_name)
        self.data.on_change = self._report
        self._reporting = self.data.call_soon(self._report_forever())
        self.log = log.bind(replica=self.replica, pid=os.getpid())
        self.log.info("engine replica ready", url=self.data.url, slots=spec.slots)

    def snapshot(self) -> dict[str, Any]:
        from ..engine.core import TICK_BUCKETS_S

        m = self.engine.metrics()
        return {
            "replica": self.replica, "pid": os.getpid(), "node": self.host,
            "url": self.data.url, "slots": m.slots, "active_slots": m.active_slots,
            "free_slots": m.slots - m.active_slots, "ready": m.ready and self.data.alive,
            "device": m.device, "dtype": m.dtype, "ticks": m.ticks,
            "late_ticks": m.late_ticks, "underruns": m.underruns, "overruns": m.overruns,
            "calls_started": m.calls_started, "calls_refused": m.calls_refused,
            "tick_p50_s": m.tick_p50_s, "tick_p99_s": m.tick_p99_s,
            "tick_count": m.tick_count, "tick_sum_s": m.tick_sum_s,
            "tick_buckets": list(m.tick_buckets), "tick_bucket_bounds": list(TICK_BUCKETS_S),
            "model": self.engine.models.description,
            "default_sampling": self.engine.default_sampling.as_dict(),
            "persona": self.engine.persona_support.as_dict(),
            # The prompt cache and prefills (/metrics), PersonaPlex only.
            "prompt": dataclasses.asdict(m.persona) if m.persona.enabled else None,
            "gc": dataclasses.asdict(m.gc),  # the replica's collector pauses (ADR 0150)
        }

    def _report(self) -> None:
        with contextlib.suppress(Exception):  # the directory restarts; report again
            self._directory.report.remote(self.snapshot())

    async def _report_forever(self) -> None:
        # Periodic, plus at once on every slot change (:attr:`EngineDataServer.on_change`).
        while True:
            self._report()
            await asyncio.sleep(directory.REPORT_PERIOD_S)

    async def lease(self, call_id: str, params: dict[str, Any] | None = None,
                    ) -> AsyncIterator[dict[str, Any]]:
        """Hold a slot for one call: yields ``{"url", "ticket", ...}`` at once, then
        ``{"ended": stats}`` when the call's data connection ends. Cancelling the lease
        (the ingress went away) releases the slot. ``params``: the call's
        :class:`~..callpath.kinds.CallParams` (checked by the ingress), as a dict."""
        from ..errors import ServerBusyError

        try:
            ticket, _ = await asyncio.wrap_future(self.data.call_soon(
                self.data.reserve(call_id, params=CallParams.from_dict(params or {}))))
        except ServerBusyError as exc:
            # Serve's router only routes here below max_ongoing_requests, so this is a
            # race with a call that is still ending: say so, the ingress retries.
            yield {"busy": str(exc), "replica": self.replica}
            return
        except PersonaError as exc:  # the ingress checked against an older report
            yield {"refused": str(exc), "replica": self.replica}
            return
        self.log.info("call leased", call_id=call_id)
        try:
            yield {"url": self.data.url, "ticket": ticket, "replica": self.replica,
                   "pid": os.getpid(), "slots": self.spec.slots}
            stats = await asyncio.wrap_future(self.data.call_soon(self.data.wait_ended(ticket)))
            yield {"ended": stats}
        finally:
            self.data.call_soon(self.data.release(ticket, "lease ended"))
            self.log.info("lease ended", call_id=call_id)

    def check_health(self) -> None:
        """Serve's health check: the tick thread and the data plane must be alive."""
        thread = self.engine._thread
        if thread is None or not thread.is_alive():
            raise RuntimeError("engine tick thread is not running")
        if not self.data.alive:
            raise RuntimeError("engine data plane is not running")

    def __del__(self) -> None:
        # Serve calls this after the drain: no lease is left.
        with contextlib.suppress(Exception):
            self._reporting.cancel()
            self._directory.remove.remote(self.replica)
        with contextlib.suppress(Exception):
            self.data.stop()
            self.engine.stop("engine replica shutting down")

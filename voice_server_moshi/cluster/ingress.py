"""The cluster's front door: Kyutai's ``/api/chat`` plus health, readiness, capacity and
metrics aggregated over the engine replicas, as a FastAPI app under ``@serve.ingress``.

Per call: auth, then admission (refuse at once with ``0x05`` + 1013 when the directory
shows no free slot, else take a lease through Serve's router, which only routes to a
replica below ``max_ongoing_requests`` = slots; a lease not granted within the routing
limit, or ``admission_wait_s`` when longer, is cancelled and the call refused), then the
relay (:mod:`.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import websockets
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .._log import get_logger
from ..moshi import protocol
from ..moshi.session import ServerSession
from ..server.auth import DoorAuth, Refusal
from ..server.limits import CallLimits
from . import directory, relay
from .metrics import render

log = get_logger(__name__)

#: Directory snapshots are reused this long (admission and the HTTP endpoints).
SNAPSHOT_MAX_AGE_S = 0.2


@dataclass(frozen=True, slots=True)
class IngressSpec:
    app_name: str = "voice-server-moshi"
    auth_token: str | None = None
    admission_wait_s: float = 0.0
    #: How long Serve's router may take to grant a lease before the call is refused.
    route_timeout_s: float = 2.0
    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    instance_name: str = "voice-server-moshi"
    #: Per-call limits, as ``serve``'s (ADR 0065); the proxy owns keepalive here.
    limits: CallLimits = field(default_factory=CallLimits)

    def __repr__(self) -> str:  # never show the token
        return (f"IngressSpec(app_name={self.app_name!r}, "
                f"auth_token={'set' if self.auth_token else 'none'})")


class _StarletteCaller:
    """:class:`relay.CallerSocket` over Starlette's WebSocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def receive(self) -> bytes | str | None:
        try:
            msg = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if msg["type"] == "websocket.disconnect":
            return None
        if msg.get("bytes") is not None:
            return bytes(msg["bytes"])
        return str(msg.get("text") or "")

    async def send(self, data: bytes) -> None:
        if self.ws.application_state != WebSocketState.CONNECTED:
            raise relay.CallerGone()
        try:
            await self.ws.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise relay.CallerGone() from exc

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)


#: The ingress of this process (one replica per Ray actor process): Serve calls
#: :func:`build_asgi` right after the deployment's constructor.
_current: IngressCore | None = None


def build_asgi() -> FastAPI:
    """The ASGI app of this process's ingress. A builder (not a module-level FastAPI app)
    because Serve pickles a ready app, and FastAPI's telemetry holds a lock."""
    core = _current
    if core is None:
        raise RuntimeError("build_asgi() before the ingress was constructed")
    app = FastAPI(title="voice-server-moshi cluster", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_api_route("/healthz", core.healthz, methods=["GET"])
    app.add_api_route("/readyz", core.readyz, methods=["GET"])
    app.add_api_route("/capacity", core.capacity, methods=["GET"])
    app.add_api_route("/metrics", core.metrics, methods=["GET"])
    app.add_api_websocket_route("/api/chat", core.chat)
    return app


class IngressCore:
    """The ingress's state and handlers; :data:`Ingress` is the Serve deployment class."""

    def __init__(self, engine: Any, spec: IngressSpec) -> None:
        global _current
        _current = self
        self.engine = engine
        self.spec = spec
        self.counters = relay.IngressCounters()
        # Per ingress replica: each throttles the guesses it sees (ADR 0101).
        self.auth = DoorAuth(spec.auth_token)
        self.name = f"ingress-{os.getpid()}"
        self._directory = directory.get_directory(spec.app_name)
        self._snap: list[dict[str, Any]] = []
        self._snap_at = 0.0

    async def replicas(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if now - self._snap_at > SNAPSHOT_MAX_AGE_S:
            try:
                self._snap = list(await self._directory.snapshot.remote())
            except Exception:
                log.warning("directory unreachable; using the last snapshot")
            self._snap_at = now
        return self._snap

    # -- HTTP -----------------------------------------------------------------------------

    async def healthz(self) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    async def readyz(self) -> JSONResponse:
        reps = await self.replicas()
        free = sum(int(r["free_slots"]) for r in reps if r["ready"])
        ready = free > 0
        reason = "ok" if ready else ("no engine replica" if not reps else "no free slot")
        return JSONResponse({"ready": ready, "reason": reason, "free_slots": free,
                             "replicas": len(reps)}, status_code=200 if ready else 503)

    async def capacity(self) -> JSONResponse:
        reps = await self.replicas()
        keys = ("replica", "pid", "node", "slots", "free_slots", "active_slots", "ready",
                "device", "tick_p50_s", "tick_p99_s", "age_s")
        return JSONResponse({
            "slots": sum(int(r["slots"]) for r in reps),
            "free_slots": sum(int(r["free_slots"]) for r in reps),
            "active_slots": sum(int(r["active_slots"]) for r in reps),
            "ready": any(r["ready"] for r in reps),
            "replicas": [{k: r.get(k) for k in keys} for r in reps],
            "ingress": {"name": self.name, "active_calls": self.counters.active_calls,
                        "routed": self.counters.routed,
                        "routing_seconds_sum": self.counters.routing_seconds_sum},
        })

    async def metrics(self, request: Request) -> Response:
        refusal = await self._refusal(request.client, request.headers, str(request.url.query))
        if refusal is not None:
            headers = ({"Retry-After": str(refusal.retry_after)}
                       if refusal.retry_after is not None else None)
            return PlainTextResponse(refusal.text, status_code=refusal.status, headers=headers)
        text = render(await self.replicas(), self.counters, self.name)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def _refusal(self, client: Any, headers: Any, query: str) -> Refusal | None:
        return await self.auth.refusal(client.host if client else "-", headers, f"/?{query}")

    # -- /api/chat ------------------------------------------------------------------------

    def _metadata(self, replica: dict[str, Any]) -> dict[str, Any]:
        return relay.granted_metadata(
            replica, instance_name=self.spec.instance_name,
            extra={"cluster": True, "replica": replica["replica"], "slots": replica["slots"]})

    async def chat(self, ws: WebSocket) -> None:
        call_id = f"clu-{uuid.uuid4().hex[:12]}"
        clog = log.bind(call_id=call_id, ingress=self.name)
        refusal = await self._refusal(ws.client, ws.headers, ws.url.query)
        if refusal is not None:
            self.counters.auth_failures += 1
            if refusal.retry_after is None:
                clog.warning("unauthorized /api/chat request")
            await ws.close(1008, refusal.text.strip())
            return
        await ws.accept()
        caller = _StarletteCaller(ws)
        granted_meta: dict[str, Any] = {}
        session = ServerSession(max_message_bytes=self.spec.max_message_bytes,
                                query_parser=relay.sampling_params,
                                metadata_builder=lambda _s: granted_meta,
                                max_malformed_replies=self.spec.limits.max_malformed)
        self.counters.connections += 1
        # Per-call parameters are checked before a slot is taken.
        if not session.accept(dict(ws.query_params)):
            await relay.flush_quietly(caller, session)
            return
        t0 = time.perf_counter()
        granted = await self._admit(call_id, clog, session.params.get("sampling_query"))
        if granted is None:
            self.counters.refused_busy += 1
            clog.info("call refused: no free slot on any replica")
            session.refuse_busy("every engine replica's slots are busy; try again later")
            await relay.flush_quietly(caller, session)
            return
        lease, first = granted
        granted_meta.update(self._metadata(first))
        self.counters.routed += 1
        self.counters.routing_seconds_sum += time.perf_counter() - t0
        clog = clog.bind(replica=first["replica"])
        try:
            data = await websockets.connect(first["url"], compression=None, proxy=None,
                                            open_timeout=5, ping_interval=1, ping_timeout=3,
                                            max_size=64 * 1024)
            await data.send(json.dumps({"ticket": first["ticket"]}))
        except Exception as exc:
            lease.cancel()
            clog.warning("engine data plane unreachable", error=str(exc))
            self.counters.replica_failures += 1
            session.refuse_busy("engine replica unreachable; try again")
            await relay.flush_quietly(caller, session)
            return
        self.counters.active_calls += 1
        clog.info("call started", routing_ms=round((time.perf_counter() - t0) * 1000, 1))
        try:
            outcome = await relay.relay_call(caller, session, data, lease_end=_drain(lease),
                                             counters=self.counters, clog=clog,
                                             limits=self.spec.limits)
            clog.info("call ended", outcome=outcome)
        finally:
            self.counters.active_calls -= 1
            lease.cancel()
            await caller.close(relay_close_code(session), "call over")

    async def _admit(self, call_id: str, clog: Any, sampling_query: dict[str, str] | None,
                     ) -> tuple[Any, dict[str, Any]] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.admission_wait_s
        while True:
            reps = await self.replicas()
            if reps and any(int(r["free_slots"]) > 0 for r in reps if r["ready"]):
                limit = max(self.spec.route_timeout_s, deadline - loop.time())
                lease = self.engine.options(stream=True).lease.remote(call_id,
                                                                      sampling_query)
                try:
                    first = await asyncio.wait_for(lease.__anext__(), limit)
                except TimeoutError:
                    lease.cancel()  # still queued in Serve's router: every replica full
                    first = None
                except Exception as exc:  # the chosen replica died while granting
                    clog.warning("lease failed", error=f"{type(exc).__name__}: {exc}")
                    first = None
                if first is not None and "busy" not in first:
                    return lease, first
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.1)


def relay_close_code(session: ServerSession) -> int:
    """1000 for a call that ended normally; the session's own code otherwise (it has
    already sent that close, and a second close is a no-op)."""
    code = session.close_code
    return 1000 if code is None else int(code)


Ingress = serve.ingress(build_asgi)(IngressCore)


async def _drain(lease: Any) -> None:
    """Wait for the lease's last item; raises if its replica died."""
    async for _ in lease:
        pass

"""The cluster's front door: Kyutai's ``/api/chat`` plus health, readiness, capacity and
metrics aggregated over the engine replicas, as a FastAPI app under ``@serve.ingress``.

Per call: auth, then admission (refuse at once with ``0x05`` + 1013 when the directory
shows no free slot, else take a lease through Serve's router, which only routes to a
replica below ``max_ongoing_requests`` = slots; a lease not granted within the routing
limit, or ``admission_wait_s`` when longer, is cancelled and the call refused), then the
call path every front door shares (:mod:`..callpath`, ADR 0110) with a data-plane client to
the leased replica as its engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .._log import get_logger
from ..callpath import wire
from ..callpath.front import CallFront
from ..callpath.kinds import CallParams
from ..callpath.remote import RemoteCall, connect_call
from ..callpath.server_call import CallerGone, ServerCall
from ..engine.call_sampling import CallSampling
from ..engine.persona import PersonaError, PersonaSupport
from ..errors import ServerBusyError
from ..moshi import protocol
from ..server.auth import DoorAuth, Refusal
from ..server.endpoints import NOT_FOUND, Capacity, readiness
from ..server.limits import CallLimits, CloseReason
from ..server.static import StaticFiles
from . import directory
from .metrics import IngressCounters, render

log = get_logger(__name__)

#: Directory snapshots are reused this long (admission and the HTTP endpoints).
SNAPSHOT_MAX_AGE_S = 0.2
#: More time for a lease to answer when its call brings a persona: the replica answers
#: once the prompt is in the row (a cold prefill takes its steps in the ticks' slack).
PROMPT_WAIT_S = 60.0


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
    #: A built web client served at ``/`` beside the API, as ``serve --static``.
    static_dir: str | None = None

    def __repr__(self) -> str:  # never show the token
        return (f"IngressSpec(app_name={self.app_name!r}, "
                f"auth_token={'set' if self.auth_token else 'none'})")


class _StarletteCaller:
    """:class:`~..callpath.server_call.CallerSocket` over Starlette's WebSocket."""

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
            raise CallerGone()
        try:
            await self.ws.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise CallerGone() from exc

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)

    def closed_reason(self) -> CloseReason | None:
        connected = (self.ws.application_state == WebSocketState.CONNECTED
                     and self.ws.client_state == WebSocketState.CONNECTED)
        return None if connected else CloseReason.CLIENT


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
    app.add_api_route("/{path:path}", core.static, methods=["GET"])
    return app


class IngressCore:
    """The ingress's state and handlers; :data:`Ingress` is the Serve deployment class."""

    def __init__(self, engine: Any, spec: IngressSpec) -> None:
        global _current
        _current = self
        self.engine = engine
        self.spec = spec
        self.counters = IngressCounters()
        # Per ingress replica: each throttles the guesses it sees (ADR 0101).
        self.auth = DoorAuth(spec.auth_token)
        self.name = f"ingress-{os.getpid()}"
        self._directory = directory.get_directory(spec.app_name)
        self._snap: list[dict[str, Any]] = []
        self._snap_at = 0.0
        self._static = StaticFiles(spec.static_dir) if spec.static_dir else None
        self.front = CallFront(spec.limits, spec.max_message_bytes, spec.instance_name,
                               spec.admission_wait_s, default_sampling=self._default_sampling,
                               counters=self.counters, persona_support=self._persona_support)

    def _default_sampling(self) -> CallSampling:
        """The replicas' per-call sampling defaults (from their last reports)."""
        for r in self._snap:
            if r.get("default_sampling"):
                return CallSampling(**r["default_sampling"])
        return CallSampling()

    def _persona_support(self) -> PersonaSupport | None:
        """What the replicas' model takes of personas (from their last reports)."""
        for r in self._snap:
            if r.get("persona"):
                return PersonaSupport.from_dict(r["persona"])
        return None

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

    async def static(self, path: str) -> Response:
        """The static web client (``--static``), else 404, as ``serve``."""
        found = self._static.lookup("/" + path) if self._static is not None else None
        if found is None:
            return PlainTextResponse(NOT_FOUND, status_code=404)
        return Response(found.body, media_type=found.content_type,
                        headers={"Cache-Control": "no-cache"})

    async def healthz(self) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    async def _capacity(self) -> Capacity:
        reps = await self.replicas()
        keys = ("replica", "pid", "node", "slots", "free_slots", "active_slots", "ready",
                "device", "tick_p50_s", "tick_p99_s", "age_s", "persona")
        return Capacity(
            sum(int(r["slots"]) for r in reps), sum(int(r["free_slots"]) for r in reps),
            any(r["ready"] for r in reps), "no engine replica ready",
            extra={"replicas": [{k: r.get(k) for k in keys} for r in reps],
                   # What the door's model takes of personas (ADR 0130); every replica
                   # runs the same engine spec.
                   "persona": (None if (support := self._persona_support()) is None
                               else support.as_dict()),
                   "ingress": {"name": self.name, "active_calls": self.counters.active_calls,
                               "routed": self.counters.routed,
                               "routing_seconds_sum": self.counters.routing_seconds_sum}})

    async def readyz(self) -> JSONResponse:
        status, body = readiness(await self._capacity())
        return JSONResponse(body, status_code=status)

    async def capacity(self) -> JSONResponse:
        return JSONResponse((await self._capacity()).as_json())

    async def metrics(self, request: Request) -> Response:
        refusal = await self._refusal(request.client, request.headers, str(request.url.query))
        if refusal is not None:
            headers = ({"Retry-After": str(refusal.retry_after)}
                       if refusal.retry_after is not None else None)
            return PlainTextResponse(refusal.text, status_code=refusal.status, headers=headers)
        text = render(await self.replicas(), self.counters, self.name)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def _refusal(self, client: Any, headers: Any, query: str) -> Refusal | None:
        refusal = await self.auth.refusal(client.host if client else "-", headers,
                                          f"/?{query}")
        if refusal is not None and refusal.retry_after is not None:
            self.counters.auth_throttled += 1
        elif refusal is not None:
            self.counters.auth_failures += 1
        return refusal

    # -- /api/chat ------------------------------------------------------------------------

    async def chat(self, ws: WebSocket) -> None:
        call_id = f"clu-{uuid.uuid4().hex[:12]}"
        clog = log.bind(call_id=call_id, ingress=self.name)
        refusal = await self._refusal(ws.client, ws.headers, ws.url.query)
        if refusal is not None:
            if refusal.retry_after is None:
                clog.warning("unauthorized /api/chat request")
            await ws.close(1008, refusal.text.strip())
            return
        await ws.accept()
        await self.replicas()  # fresh defaults for the query check
        caller = _StarletteCaller(ws)
        try:
            await self.front.serve_call(caller, dict(ws.query_params), _Gateway(self, clog),
                                        call_id, clog, track=self._track)
        finally:
            await caller.close(1000, "call over")  # a no-op after the session's own close

    @contextlib.contextmanager
    def _track(self, call: ServerCall) -> Iterator[None]:
        try:
            yield
        finally:
            if isinstance(call.link, RemoteCall) and call.link.lost:
                self.counters.replica_failures += 1

    async def open(self, call_id: str, params: CallParams, clog: Any) -> RemoteCall:
        """Admit a call on a replica: a lease, then its data connection."""
        t0 = time.perf_counter()
        granted = await self._admit(call_id, clog, params.as_dict())
        if granted is None:
            clog.info("call refused: no free slot on any replica")
            raise ServerBusyError("every engine replica's slots are busy; try again later")
        lease, first = granted
        self.counters.routed += 1
        self.counters.routing_seconds_sum += time.perf_counter() - t0
        try:
            link = await connect_call(first["url"], wire.Hello(ticket=first["ticket"]),
                                      lease_end=_drain(lease), ping_interval=1,
                                      extra={"cluster": True, "replica": first["replica"]})
        except ServerBusyError as exc:
            lease.cancel()
            clog.warning("engine data plane unreachable", error=str(exc))
            self.counters.replica_failures += 1
            raise ServerBusyError("engine replica unreachable; try again") from None
        clog.info("call routed", replica=first["replica"],
                  routing_ms=round((time.perf_counter() - t0) * 1000, 1))
        return link

    async def _admit(self, call_id: str, clog: Any, params: dict[str, Any],
                     ) -> tuple[Any, dict[str, Any]] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.admission_wait_s
        while True:
            reps = await self.replicas()
            if reps and any(int(r["free_slots"]) > 0 for r in reps if r["ready"]):
                limit = max(self.spec.route_timeout_s, deadline - loop.time())
                if "voice" in params:  # a persona: the lease answers once it is prefilled
                    limit += PROMPT_WAIT_S
                lease = self.engine.options(stream=True).lease.remote(call_id, params)
                try:
                    first = await asyncio.wait_for(lease.__anext__(), limit)
                except TimeoutError:
                    lease.cancel()  # still queued in Serve's router: every replica full
                    first = None
                except Exception as exc:  # the chosen replica died while granting
                    clog.warning("lease failed", error=f"{type(exc).__name__}: {exc}")
                    first = None
                if first is not None and "refused" in first:
                    raise PersonaError(str(first["refused"]))
                if first is not None and "busy" not in first:
                    return lease, first
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.1)


class _Gateway:
    """The cluster's :class:`~..callpath.kinds.EngineGateway` for one call."""

    def __init__(self, core: IngressCore, clog: Any) -> None:
        self.core, self.clog = core, clog

    async def open(self, call_id: str, params: CallParams, wait_s: float) -> RemoteCall:
        return await self.core.open(call_id, params, self.clog)


Ingress = serve.ingress(build_asgi)(IngressCore)


async def _drain(lease: Any) -> None:
    """Wait for the lease's last item; raises if its replica died."""
    async for _ in lease:
        pass

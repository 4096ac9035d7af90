"""The batched Moshi server: Kyutai's ``/api/chat`` protocol over one engine, many calls.

Built on ``websockets`` (a core dependency; ADR 0031). Plain HTTP endpoints are answered
in ``process_request`` before any WebSocket upgrade:

* ``GET /healthz``: 200 while the process serves;
* ``GET /readyz``: 200 when the engine is warmed up, its tick thread alive, and a slot
  free, else 503;
* ``GET /capacity``: JSON ``{"slots", "free_slots", "active_slots", "ready"}``;
* ``GET /metrics``: Prometheus text format (:mod:`.metrics`).

``/api/chat`` follows Kyutai's Rust servers: a 9-byte handshake (``0x00`` + two u32 LE
zeros), a ``0x04`` metadata JSON, then ``0x01`` Ogg/Opus audio and ``0x02`` text both
ways; a client's ``0x02`` text means "say this", and ``0x40``-``0x42`` carry the rest of
steering (:mod:`.steering`, docs/protocol.md, ADR 0070); per-call sampling comes from
Kyutai's query parameters (ADR 0080). A call that finds every slot taken gets a ``0x05``
error and a close (1013, "try again later"), never a silent wait. Optional bearer-token
auth guards ``/api/chat`` and ``/metrics``; an address with too many wrong tokens gets 429
for a while (:mod:`.auth`).

Every call runs under a :class:`~.limits.CallGuard` (ADR 0065): first-audio and no-input
deadlines, an optional maximum length, input accounting before decoding, a message
budget; a reaped call gets a ``0x05`` saying why and a close code, its slot is freed
first, and ``moshi_server_calls_closed_total`` counts every ending by reason. Logging
never breaks a request and never shows a token (:mod:`.logsafe`).

Operators can end calls without stopping the server: :meth:`BatchedServer.close_call`
closes one call, or all of them, with a close code of their choice (1001 "going away" by
default, what a shutdown sends too).

The protocol itself (handshake, metadata, kinds, malformed messages, errors, close codes)
is the sans-I/O :class:`~voice_server_moshi.moshi.session.ServerSession`, one per
connection; this module is its shell on ``websockets``: HTTP endpoints, engine slots, Opus,
and sending what the session queues. ``session_factory`` is where extensions configure
each connection's session (query parameters, metadata keys, extra kinds).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from .._log import get_logger
from ..engine.call_sampling import SamplingError, parse_sampling_query
from ..engine.core import Engine
from ..engine.session import EngineCall
from ..errors import ServerBusyError
from ..moshi import caller_protocol
from ..moshi.session import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_BUSY,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    QueryError,
    ServerSession,
    SessionEvent,
)
from . import steering
from .auth import DoorAuth, FailureLimiter, address_of, throttled_response
from .config import ServerConfig
from .intake import receive_loop
from .limits import CallGuard, CloseReason, Reap
from .logsafe import SafeLogger, install_redaction
from .metadata import call_metadata
from .metrics import CONTENT_TYPE, ServerCollector, ServerCounters, new_registry, render
from .outbound import Connection as _Connection
from .outbound import send_loop
from .reaper import closed_by, watch_timeouts
from .responses import bytes_response, json_response, response
from .static import StaticFiles

__all__ = [
    "CLOSE_BAD_PAYLOAD", "CLOSE_BUSY", "CLOSE_GOING_AWAY", "CLOSE_INTERNAL", "BatchedServer",
    "ServerConfig", "SessionFactory", "run_server",
]

log = SafeLogger(get_logger(__name__))

SAMPLE_RATE = 24000


#: Makes each connection's session (the server passed in); see :meth:`BatchedServer.new_session`.
SessionFactory = Callable[["BatchedServer"], ServerSession]


class BatchedServer:
    """Serves ``engine`` on Kyutai's protocol. Start with :meth:`start`, stop with
    :meth:`close`; the engine's tick thread must be running (``engine.start()``)."""

    def __init__(self, engine: Engine, config: ServerConfig | None = None, *,
                 session_factory: SessionFactory | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.counters = ServerCounters()
        self.session_factory = session_factory
        self._server: Server | None = None
        self._calls: set[EngineCall] = set()
        #: call id -> its connection, for :meth:`close_call`.
        self._connections: dict[str, _Connection] = {}
        self._closing = False
        self._static = StaticFiles(self.config.static_dir) if self.config.static_dir else None
        self.auth_limiter = FailureLimiter(self.config.auth_max_failures,
                                           self.config.auth_window_s)
        self.auth = DoorAuth(self.config.auth_token, self.auth_limiter)
        self._registry = new_registry(ServerCollector(engine.metrics, self.counters,
                                                      engine.tick_thread_alive))
        #: call id -> why the server is ending it (the first reason wins).
        self._ending: dict[str, CloseReason] = {}

    def new_session(self) -> ServerSession:
        """The protocol session of a new connection: ``session_factory(self)`` if given,
        else :meth:`default_session`."""
        if self.session_factory is not None:
            return self.session_factory(self)
        return self.default_session()

    def default_session(self) -> ServerSession:
        """A session with this server's limits and metadata (extensions start from it)."""
        session = steering.install(ServerSession(
            max_message_bytes=self.config.max_message_bytes, query_parser=self.call_params,
            metadata_builder=self.base_metadata,
            max_malformed_replies=self.config.limits.max_malformed))
        if self.engine.stt is not None:
            caller_protocol.install_server(session)  # 0x52: the client asks for last words
        return session

    def call_params(self, query: Mapping[str, str]) -> Mapping[str, Any]:
        """Kyutai's per-call sampling query parameters, validated, seeds drawn (ADR 0080)."""
        try:
            sampling = parse_sampling_query(query, self.engine.default_sampling)
        except SamplingError as exc:
            raise QueryError(str(exc)) from None
        return {"sampling": sampling.seeded()}

    def base_metadata(self, session: ServerSession) -> Mapping[str, Any]:
        """The ``0x04`` metadata every call gets: Kyutai's Rust-backend schema with the
        call's applied sampling, then ours."""
        sampling = session.params.get("sampling") or self.engine.default_sampling
        models = self.engine.models
        return call_metadata(
            sampling, lm_model_file=models.lm_file or models.description,
            mimi_model_file=models.mimi_file or models.description,
            instance_name=self.config.instance_name,
            extra={"slots": self.engine.slots, "model": models.description,
                   "per_call_sampling": self.engine.sampler is not None,
                   # docs/protocol.md: 0x50-0x53 caller transcripts (an STT beside Moshi).
                   **({caller_protocol.METADATA_KEY: True} if self.engine.stt is not None
                      else {})},
        )

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        install_redaction()
        lim = self.config.limits
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,  # Opus does not compress; deflate would only cost CPU
            max_size=self.config.max_message_bytes,
            max_queue=32,
            ping_interval=lim.ping_interval_s,
            ping_timeout=lim.ping_timeout_s,
            close_timeout=lim.close_timeout_s,
            server_header="voice-server-moshi",
            logger=logging.getLogger("websockets.server"),  # redacted: install_redaction
        )
        log.info("server listening", host=self.config.host, port=self.port,
                 slots=self.engine.slots, auth=self.config.auth_token is not None)

    async def close(self) -> None:
        """Stop accepting, close every call with 1001 and wait for handlers to finish."""
        self._closing = True
        if self._server is None:
            return
        for call_id in self._connections:
            self._ending.setdefault(call_id, CloseReason.SHUTDOWN)
        self._server.close(close_connections=True)
        for call in list(self._calls):
            call.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 10)

    @property
    def call_ids(self) -> list[str]:
        """Ids of the calls in progress (the ``call_id`` of the server's log lines)."""
        return list(self._connections)

    async def close_call(
        self,
        call_id: str | None = None,
        *,
        code: int = CLOSE_GOING_AWAY,
        reason: str = "closed by the operator",
    ) -> int:
        """Operator action: end one call (``call_id``) or every call (None) with a WebSocket
        close frame of ``code``, e.g. to drain an instance without stopping it. The server
        keeps serving new calls. Returns how many calls were closed (0 for an unknown id)."""
        ids = list(self._connections) if call_id is None else [call_id]
        targets = [self._connections[i] for i in ids if i in self._connections]
        for i in ids:
            if i in self._connections:
                self._ending.setdefault(i, CloseReason.OPERATOR)

        async def close_one(conn: _Connection) -> None:
            conn.session.close(code, reason)
            with contextlib.suppress(Exception):
                await conn.flush()

        await asyncio.gather(*(close_one(conn) for conn in targets))
        if targets:
            log.info("calls closed by the operator", count=len(targets), code=code,
                     reason=reason)
        return len(targets)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    # -- HTTP ----------------------------------------------------------------------------

    async def _auth_refusal(self, connection: ServerConnection, request: Request,
                            path: str) -> Response | None:
        """None when the request may go on (the right token always may); else 401, or 429
        (held a moment) for a wrong token from an address that guesses too often."""
        addr = address_of(connection.remote_address)
        refusal = await self.auth.refusal(addr, request.headers, request.path)
        if refusal is None:
            return None
        if refusal.retry_after is not None:
            self.counters.auth_throttled += 1
            return throttled_response(refusal.retry_after)
        self.counters.auth_failures += 1
        log.warning("unauthorized request", path=path, remote=addr)
        return response(http.HTTPStatus.UNAUTHORIZED, refusal.text, "text/plain")

    async def _process_request(self, connection: ServerConnection,
                               request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return response(http.HTTPStatus.OK, "ok\n", "text/plain")
        if path == "/readyz":
            free = self.engine.free_slots()
            alive = self.engine.tick_thread_alive()
            ready = self.engine.ready and alive and free > 0 and not self._closing
            reason = ("ok" if ready else "closing" if self._closing
                      else "warming up" if not self.engine.ready
                      else "engine tick thread is not running" if not alive
                      else "no free slot")
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return json_response(status, {"ready": ready, "reason": reason, "free_slots": free})
        if path == "/capacity":
            free = self.engine.free_slots()
            return json_response(http.HTTPStatus.OK, {
                "slots": self.engine.slots, "free_slots": free,
                "active_slots": self.engine.slots - free, "ready": self.engine.ready,
            })
        if path in ("/metrics", "/api/chat"):
            refusal = await self._auth_refusal(connection, request, path)
            if refusal is not None:
                return refusal
        if path == "/metrics":
            return response(http.HTTPStatus.OK, render(self._registry), CONTENT_TYPE)
        if path == "/api/chat":
            if self._closing:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n",
                                 "text/plain")
            return None  # go on with the WebSocket upgrade
        if self._static is not None and request.headers.get("Upgrade") is None:
            found = self._static.lookup(path)
            if found is not None:
                return bytes_response(http.HTTPStatus.OK, found.body, found.content_type,
                                      cache="no-cache")
        return response(http.HTTPStatus.NOT_FOUND,
                         "not found: try /api/chat, /healthz, /readyz, /capacity, /metrics\n",
                         "text/plain")

    # -- /api/chat -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        call_id = f"srv-{uuid.uuid4().hex[:12]}"
        clog = log.bind(call_id=call_id, remote=str(ws.remote_address))
        self.counters.connections += 1
        conn = _Connection(ws, self.new_session())
        session = conn.session
        # Per-call parameters are checked before a slot is taken.
        if not session.accept(ws.request.path if ws.request is not None else ""):
            clog.info("call refused: bad request", reason=session.close_reason)
            await conn.flush_quietly()
            return
        call = EngineCall(self.engine, call_id, max_queued=self.config.max_queued_outputs)
        try:
            async with call.admitted(self.config.admission_wait_s,
                                     session.params.get("sampling")) as slot:
                self._calls.add(call)
                self._connections[call_id] = conn
                self.counters.active_connections += 1
                try:
                    await self._serve_call(conn, call, call_id, clog.bind(slot=slot.index))
                finally:
                    self._calls.discard(call)
                    self._connections.pop(call_id, None)
                    self.counters.active_connections -= 1
                    reason = (self._ending.pop(call_id) if call_id in self._ending
                              else closed_by(ws))
                    self.counters.closed[reason.value] += 1
                clog.info("call ended", reason=reason.value, slot=slot.index,
                          dropped_outputs=call.dropped_outputs, underruns=slot.underruns,
                          overruns=slot.overruns, trimmed=slot.trimmed)
        except ServerBusyError as exc:
            self.counters.refused_busy += 1
            clog.info("call refused: server busy")
            session.refuse_busy(str(exc))
            await conn.flush_quietly()
        finally:
            if self._closing:
                session.close(CLOSE_GOING_AWAY, "server shutting down")
                with contextlib.suppress(Exception):
                    await conn.flush()

    async def _serve_call(self, conn: _Connection, call: EngineCall, call_id: str,
                          clog: SafeLogger) -> None:
        loop = asyncio.get_running_loop()
        guard = CallGuard(self.config.limits, loop.time())
        tasks: list[asyncio.Task[Any]] = []
        try:
            conn.session.start()
            await conn.flush()
            clog.info("call started")
            sender = asyncio.create_task(send_loop(conn, call, call_id, clog, self._ending,
                                                   self.counters),
                                         name=f"send:{call_id}")
            tasks.append(sender)
            tasks.append(asyncio.create_task(
                watch_timeouts(guard, lambda r: self._reap(conn, call, call_id, r, clog)),
                name=f"timeouts:{call_id}"))
            async def other(ev: SessionEvent) -> None:
                if isinstance(ev, steering.STEERING_EVENTS):
                    await steering.handle(conn.session, call, ev, clog)
                elif isinstance(ev, caller_protocol.FlushCaller):
                    call.flush_caller()  # the client's audio has ended: last words, 0x53

            reap = await receive_loop(conn.ws, conn.session, call, guard, self.counters,
                                      clog, flush=conn.flush, on_event=other)
            if reap is not None:
                await self._reap(conn, call, call_id, reap, clog)
            elif call.slot is not None and call.slot.closed:
                # The engine ended the call under us: give the sender the moment it needs
                # to send the engine's error and close with 1011 before it is cancelled.
                await asyncio.wait({sender}, timeout=2.0)
        except ConnectionClosed:
            pass
        finally:
            call.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _reap(self, conn: _Connection, call: EngineCall, call_id: str, reap: Reap,
                    clog: SafeLogger) -> None:
        """End a call for ``reap``'s reason: free its slot at once, then ``0x05`` saying
        why and the close frame (bounded: a peer that reads nothing must not hold it)."""
        call.close()
        if conn.ws.state is not State.OPEN or call_id in self._ending:
            return  # already ending: keepalive, the client, the operator came first
        self._ending[call_id] = reap.reason
        clog.info("closing the call", reason=reap.reason.value, code=reap.code,
                  message=reap.message)
        conn.session.fail(reap.message, code=reap.code, reason=reap.reason.value)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.flush(), self.config.limits.close_timeout_s + 1)


async def run_server(
    engine: Engine,
    config: ServerConfig,
    *,
    on_listening: Callable[[BatchedServer], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start ``engine`` (warm-up + tick thread), serve until ``stop`` is set, shut down."""
    await asyncio.to_thread(engine.start)
    server = BatchedServer(engine, config)
    await server.start()
    if on_listening is not None:
        res = on_listening(server)
        if res is not None:
            await res
    try:
        if stop is None:
            await asyncio.Future()  # forever, until cancelled
        else:
            await stop.wait()
    finally:
        await server.close()
        await asyncio.to_thread(engine.stop, "server shutting down")

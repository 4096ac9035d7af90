"""The batched Moshi server: Kyutai's ``/api/chat`` protocol over one engine, many calls.

Built on ``websockets`` (a core dependency; ADR 0031). Plain HTTP endpoints
(``/healthz``, ``/readyz``, ``/capacity``, ``/metrics``, the same on every front door) are
answered in ``process_request`` before any WebSocket upgrade (:mod:`.endpoints`).

``/api/chat`` follows Kyutai's Rust servers: a 9-byte handshake (``0x00`` + two u32 LE
zeros), a ``0x04`` metadata JSON, then ``0x01`` Ogg/Opus audio and ``0x02`` text both
ways; a client's ``0x02`` text means "say this", and ``0x40``-``0x42`` carry the rest of
steering (docs/protocol.md, ADR 0070); per-call sampling comes from
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

The call itself (the sans-I/O :class:`~voice_server_moshi.moshi.session.ServerSession`,
limits, Opus, steering, caller transcripts) is :mod:`voice_server_moshi.callpath`, the
same for ``serve``, its ingress workers and the cluster (ADR 0110); this module is its
shell on ``websockets`` with the engine in this process: HTTP endpoints, operator closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator

from websockets.asyncio.server import Server, ServerConnection, serve

from .._log import get_logger
from ..audio.opus import encoder_name
from ..callpath.front import CallFront
from ..callpath.local import LocalEngine
from ..callpath.server_call import ServerCall
from ..engine.core import Engine
from ..moshi.session import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_BUSY,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
)
from .config import ServerConfig
from .endpoints import Capacity, HttpFront
from .limits import CloseReason
from .logsafe import SafeLogger, install_redaction
from .metrics import ServerCollector, ServerCounters, new_registry, render
from .ws_caller import WsCaller

__all__ = [
    "CLOSE_BAD_PAYLOAD", "CLOSE_BUSY", "CLOSE_GOING_AWAY", "CLOSE_INTERNAL", "BatchedServer",
    "ServerConfig", "run_server",
]

log = SafeLogger(get_logger(__name__))


class BatchedServer:
    """Serves ``engine`` on Kyutai's protocol. Start with :meth:`start`, stop with
    :meth:`close`; the engine's tick thread must be running (``engine.start()``)."""

    def __init__(self, engine: Engine, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.counters = ServerCounters()
        self._server: Server | None = None
        #: call id -> the call in progress, for :meth:`close_call`.
        self._calls: dict[str, ServerCall] = {}
        self._closing = False
        self._registry = new_registry(ServerCollector(engine.metrics, self.counters,
                                                      engine.tick_thread_alive))
        cfg = self.config
        #: The engine interface, here the engine in this process (ADR 0110).
        self.gateway = LocalEngine(engine, max_queued_outputs=cfg.max_queued_outputs)
        #: The call path every front door shares (ADR 0110).
        self.front = CallFront(cfg.limits, cfg.max_message_bytes, cfg.instance_name,
                               cfg.admission_wait_s,
                               default_sampling=lambda: engine.default_sampling,
                               counters=self.counters,
                               persona_support=lambda: engine.persona_support)
        #: /healthz, /readyz, /capacity, /metrics, auth, the static client (ADR 0110).
        self.http = HttpFront(cfg, self.counters, capacity=self.capacity,
                              metrics=self.metrics_text)
        self.auth_limiter = self.http.limiter

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        install_redaction()
        self._server = await serve(self._handle, self.config.host, self.config.port,
                                   process_request=self.http.process_request,
                                   **self.config.websocket_options())
        log.info("server listening", host=self.config.host, port=self.port,
                 slots=self.engine.slots, auth=self.config.auth_token is not None,
                 opus_encoder=encoder_name())

    async def close(self) -> None:
        """Stop accepting, close every call with 1001 and wait for handlers to finish."""
        self._closing = self.http.closing = True
        if self._server is None:
            return
        for call in list(self._calls.values()):
            call.end(CloseReason.SHUTDOWN)
            await call.link.aclose()
        self._server.close(close_connections=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 10)

    @property
    def call_ids(self) -> list[str]:
        """Ids of the calls in progress (the ``call_id`` of the server's log lines)."""
        return list(self._calls)

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
        ids = list(self._calls) if call_id is None else [call_id]
        targets = [self._calls[i] for i in ids if i in self._calls]
        await asyncio.gather(*(c.close(code, reason, CloseReason.OPERATOR) for c in targets))
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

    async def capacity(self) -> Capacity:
        engine = self.engine
        alive = engine.tick_thread_alive()
        return Capacity(engine.slots, engine.free_slots(), engine.ready and alive,
                        "warming up" if not engine.ready
                        else "engine tick thread is not running",
                        extra={"persona": engine.persona_support.as_dict()})

    async def metrics_text(self) -> str:
        return render(self._registry)

    # -- /api/chat -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        call_id = f"srv-{uuid.uuid4().hex[:12]}"
        clog = log.bind(call_id=call_id, remote=str(ws.remote_address))
        try:
            await self.front.serve_call(WsCaller(ws),
                                        ws.request.path if ws.request is not None else "",
                                        self.gateway, call_id, clog, track=self._track)
        finally:
            if self._closing:
                with contextlib.suppress(Exception):
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down")

    @contextlib.contextmanager
    def _track(self, call: ServerCall) -> Iterator[None]:
        call_id = call.call_id
        self._calls[call_id] = call
        try:
            yield
        finally:
            self._calls.pop(call_id, None)


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

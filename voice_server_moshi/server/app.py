"""The batched Moshi server: Kyutai's ``/api/chat`` protocol over one engine, many calls.

Built on ``websockets`` (a core dependency; ADR 0031). Plain HTTP endpoints are answered
in ``process_request`` before any WebSocket upgrade:

* ``GET /healthz``: 200 while the process serves;
* ``GET /readyz``: 200 when the engine is warmed up and has a free slot, else 503;
* ``GET /capacity``: JSON ``{"slots", "free_slots", "active_slots", "ready"}``;
* ``GET /metrics``: Prometheus text format (:mod:`.metrics`).

``/api/chat`` follows Kyutai's Rust servers: a 9-byte handshake (``0x00`` + two u32 LE
zeros), a ``0x04`` metadata JSON, then ``0x01`` Ogg/Opus audio and ``0x02`` text both
ways. A call that finds every slot taken gets a ``0x05`` error and a close (1013, "try
again later"), never a silent wait. Optional bearer-token auth guards ``/api/chat`` and
``/metrics``.

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
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .._log import get_logger
from ..audio.framing import SampleFramer
from ..audio.opus import OpusDecoder, OpusEncoder
from ..engine.core import FRAME_SAMPLES, Engine, SlotError, SlotOutput
from ..engine.session import EngineCall
from ..errors import ServerBusyError
from ..moshi.session import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_BUSY,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    AudioReceived,
    CloseFrame,
    MalformedReceived,
    ServerSession,
    bearer_authorized,
)
from .config import ServerConfig
from .metrics import ServerCounters, render_metrics
from .responses import json_response, response

__all__ = [
    "CLOSE_BAD_PAYLOAD", "CLOSE_BUSY", "CLOSE_GOING_AWAY", "CLOSE_INTERNAL", "BatchedServer",
    "ServerConfig", "SessionFactory", "run_server",
]

log = get_logger(__name__)

SAMPLE_RATE = 24000


class _Connection:
    """A WebSocket and its session: sends what the session queued, in order."""

    def __init__(self, ws: ServerConnection, session: ServerSession) -> None:
        self.ws = ws
        self.session = session

    async def flush(self) -> None:
        for item in self.session.data_to_send():
            if isinstance(item, CloseFrame):
                await self.ws.close(item.code, item.reason)
            else:
                await self.ws.send(item)

    async def flush_quietly(self) -> None:
        """Flush, ignoring a connection that is already gone."""
        with contextlib.suppress(ConnectionClosed):
            await self.flush()


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

    def new_session(self) -> ServerSession:
        """The protocol session of a new connection: ``session_factory(self)`` if given,
        else :meth:`default_session`."""
        if self.session_factory is not None:
            return self.session_factory(self)
        return self.default_session()

    def default_session(self) -> ServerSession:
        """A session with this server's limits and metadata (extensions start from it)."""
        return ServerSession(max_message_bytes=self.config.max_message_bytes,
                             metadata_builder=self.base_metadata)

    def base_metadata(self, session: ServerSession) -> Mapping[str, Any]:
        """The ``0x04`` metadata every call gets."""
        return {
            "instance_name": self.config.instance_name,
            "server": "voice-server-moshi",
            "slots": self.engine.slots,
            "model": self.engine.models.description,
        }

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,  # Opus does not compress; deflate would only cost CPU
            max_size=self.config.max_message_bytes,
            max_queue=32,
            ping_interval=10,
            ping_timeout=20,
            server_header="voice-server-moshi",
        )
        log.info("server listening", host=self.config.host, port=self.port,
                 slots=self.engine.slots, auth=self.config.auth_token is not None)

    async def close(self) -> None:
        """Stop accepting, close every call with 1001 and wait for handlers to finish."""
        self._closing = True
        if self._server is None:
            return
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
        if call_id is None:
            targets = list(self._connections.values())
        else:
            conn = self._connections.get(call_id)
            targets = [] if conn is None else [conn]

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

    def _authorized(self, request: Request) -> bool:
        return bearer_authorized(self.config.auth_token, request.headers, request.path)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return response(http.HTTPStatus.OK, "ok\n", "text/plain")
        if path == "/readyz":
            free = self.engine.free_slots()
            ready = self.engine.ready and free > 0 and not self._closing
            reason = ("ok" if ready else "closing" if self._closing
                      else "warming up" if not self.engine.ready else "no free slot")
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return json_response(status, {"ready": ready, "reason": reason, "free_slots": free})
        if path == "/capacity":
            free = self.engine.free_slots()
            return json_response(http.HTTPStatus.OK, {
                "slots": self.engine.slots, "free_slots": free,
                "active_slots": self.engine.slots - free, "ready": self.engine.ready,
            })
        if path == "/metrics":
            if not self._authorized(request):
                return response(http.HTTPStatus.UNAUTHORIZED, "unauthorized\n", "text/plain")
            text = render_metrics(self.engine.metrics(), self.counters)
            return response(http.HTTPStatus.OK, text, "text/plain; version=0.0.4")
        if path == "/api/chat":
            if not self._authorized(request):
                self.counters.auth_failures += 1
                log.warning("unauthorized /api/chat request",
                            remote=str(connection.remote_address))
                return response(http.HTTPStatus.UNAUTHORIZED,
                                 "missing or wrong bearer token\n", "text/plain")
            if self._closing:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n",
                                 "text/plain")
            return None  # go on with the WebSocket upgrade
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
            await call.open(self.config.admission_wait_s)
        except ServerBusyError as exc:
            self.counters.refused_busy += 1
            clog.info("call refused: server busy")
            session.refuse_busy(str(exc))
            await conn.flush_quietly()
            return
        assert call.slot is not None
        clog = clog.bind(slot=call.slot.index)
        self._calls.add(call)
        self._connections[call_id] = conn
        self.counters.active_connections += 1
        sender: asyncio.Task[None] | None = None
        try:
            session.start()
            await conn.flush()
            clog.info("call started")
            sender = asyncio.create_task(self._send_loop(conn, call, clog),
                                         name=f"send:{call_id}")
            await self._receive_loop(conn, call, clog)
            if call.slot.closed:
                # The engine ended the call under us: give the sender the moment it needs
                # to send the engine's error and close with 1011 before it is cancelled.
                await asyncio.wait({sender}, timeout=2.0)
        except ConnectionClosed:
            pass
        finally:
            call.close()
            self._calls.discard(call)
            self._connections.pop(call_id, None)
            self.counters.active_connections -= 1
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            if self._closing:
                session.close(CLOSE_GOING_AWAY, "server shutting down")
                with contextlib.suppress(Exception):
                    await conn.flush()
            clog.info("call ended", dropped_outputs=call.dropped_outputs,
                      underruns=call.slot.underruns, overruns=call.slot.overruns)

    async def _receive_loop(self, conn: _Connection, call: EngineCall, clog: Any) -> None:
        decoder = OpusDecoder(SAMPLE_RATE)
        framer = SampleFramer(FRAME_SAMPLES, np.float32)
        session = conn.session
        async for raw in conn.ws:
            self.counters.messages_in += 1
            for ev in session.receive_data(raw):
                if isinstance(ev, MalformedReceived):
                    self.counters.protocol_errors += 1
                    clog.info("malformed message skipped", error=str(ev.error))
                elif isinstance(ev, AudioReceived):
                    try:
                        pcm = decoder.decode(ev.data)
                    except Exception as exc:  # sphn raises its own errors on corrupt streams
                        self.counters.protocol_errors += 1
                        clog.info("bad Ogg/Opus audio; closing the call", error=str(exc))
                        session.reject_audio(str(exc))
                        await conn.flush()
                        return
                    for frame in framer.push(pcm):
                        try:
                            call.send(frame)
                        except RuntimeError:
                            return  # the engine closed this call; the sender reports why
                # Client text, unknown kinds, control, ping: nothing to do here (yet).
            await conn.flush()  # replies to malformed messages

    async def _send_loop(self, conn: _Connection, call: EngineCall, clog: Any) -> None:
        try:
            await self._send_outputs(conn, call, clog)
        except Exception as exc:
            # Never leave a call half alive: no more audio would come, so end it.
            clog.exception("sending to the client failed; closing the call")
            conn.session.fail(f"server error: {exc}", code=CLOSE_INTERNAL, reason="server error")
            with contextlib.suppress(Exception):
                await conn.flush()

    async def _send_outputs(self, conn: _Connection, call: EngineCall, clog: Any) -> None:
        encoder = OpusEncoder(SAMPLE_RATE)
        session = conn.session
        async for ev in call.events():
            if isinstance(ev, SlotError):
                clog.warning("engine failed the call", error=ev.message)
                session.fail(ev.message, code=CLOSE_INTERNAL, reason="engine error")
                await conn.flush_quietly()
                return
            assert isinstance(ev, SlotOutput)
            if session.send_audio(encoder.encode(ev.pcm)):
                self.counters.audio_frames_out += 1
            if ev.text:
                session.send_text(ev.text)
            try:
                await conn.flush()
            except ConnectionClosed:
                return


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

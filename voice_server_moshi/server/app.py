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
ways. A call that finds every slot taken gets a ``0x05`` error and a close (1013, "try
again later"), never a silent wait. Optional bearer-token auth guards ``/api/chat`` and
``/metrics``; an address with too many wrong tokens gets 429 for a while (:mod:`.auth`).

Every call runs under :class:`~.limits.CallGuard`: first-audio and no-input deadlines, an
optional maximum length, input accounting before decoding and a message budget; a reaped
call gets a ``0x05`` saying why and a close code, and ``moshi_server_calls_closed_total``
counts each reason. Logging never breaks a request and never shows a token
(:mod:`.logsafe`).

Operators can end calls without stopping the server: :meth:`BatchedServer.close_call`
closes one call, or all of them, with a close code of their choice (1001 "going away" by
default, what a shutdown sends too).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from .._log import get_logger
from ..audio.framing import SampleFramer
from ..audio.opus import OpusDecoder, OpusEncoder
from ..engine.core import FRAME_SAMPLES, Engine, SlotError, SlotOutput
from ..engine.session import EngineCall
from ..errors import ServerBusyError
from ..moshi import protocol
from .auth import FailureLimiter, address_of, offered_tokens, token_matches
from .limits import CallGuard, CallLimits, CloseReason, Reap
from .logsafe import SafeLogger, install_redaction
from .metrics import CONTENT_TYPE, ServerCollector, ServerCounters, new_registry, render

log = SafeLogger(get_logger(__name__))

SAMPLE_RATE = 24000
#: Close codes: 1013 try again later (busy), 1008 policy (auth), 1007 bad payload,
#: 1011 internal error, 1001 going away (shutdown).
CLOSE_BUSY = 1013
CLOSE_BAD_PAYLOAD = 1007
CLOSE_INTERNAL = 1011
CLOSE_GOING_AWAY = 1001


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8998
    auth_token: str | None = None
    #: Largest message accepted; an 80 ms Ogg page is a few hundred bytes.
    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    #: How long a new call may wait for a free slot before it is refused.
    admission_wait_s: float = 0.0
    #: Outputs buffered per call when the client reads slowly (oldest dropped).
    max_queued_outputs: int = 150
    instance_name: str = "voice-server-moshi"
    #: Timeouts, input accounting, message budget (ADR 0065).
    limits: CallLimits = field(default_factory=CallLimits)
    #: Wrong tokens allowed per address per window before 429.
    auth_max_failures: int = 10
    auth_window_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.admission_wait_s < 0:
            raise ValueError(f"admission_wait_s must be >= 0, got {self.admission_wait_s}")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token must not be empty when set")

    def __repr__(self) -> str:  # never show the token
        tok = "set" if self.auth_token else "none"
        return (f"ServerConfig(host={self.host!r}, port={self.port}, auth_token={tok}, "
                f"limits={self.limits!r})")


def _response(status: http.HTTPStatus, body: str, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body.encode()))
    headers["Cache-Control"] = "no-store"
    # websockets closes the TCP connection after a process_request response; say so, or
    # keep-alive clients (httpx, Prometheus) race a reused, already-closed connection.
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body.encode())


def _too_many(retry_after: int) -> Response:
    resp = _response(http.HTTPStatus.TOO_MANY_REQUESTS,
                     "too many failed attempts from this address; retry later\n", "text/plain")
    resp.headers["Retry-After"] = str(retry_after)
    return resp


def _json(status: http.HTTPStatus, obj: Any) -> Response:
    return _response(status, json.dumps(obj) + "\n", "application/json")


class BatchedServer:
    """Serves ``engine`` on Kyutai's protocol. Start with :meth:`start`, stop with
    :meth:`close`; the engine's tick thread must be running (``engine.start()``)."""

    def __init__(self, engine: Engine, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.counters = ServerCounters()
        self.auth_limiter = FailureLimiter(self.config.auth_max_failures,
                                           self.config.auth_window_s)
        self._registry = new_registry(ServerCollector(engine.metrics, self.counters,
                                                      self.tick_thread_alive))
        #: call id -> why it is being closed, when the server closes it.
        self._ending: dict[str, CloseReason] = {}
        self._server: Server | None = None
        self._calls: set[EngineCall] = set()
        #: call id -> its connection, for :meth:`close_call`.
        self._connections: dict[str, ServerConnection] = {}
        self._closing = False

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    def tick_thread_alive(self) -> bool:
        """Whether the engine's tick thread runs (a thread killed by an exception would
        leave every call silent while the process looks healthy)."""
        alive = getattr(self.engine, "tick_thread_alive", None)
        if callable(alive):
            return bool(alive())
        thread = getattr(self.engine, "_thread", None)
        return thread is not None and thread.is_alive()

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

        async def close_one(ws: ServerConnection) -> None:
            with contextlib.suppress(Exception):
                await ws.close(code, reason)

        await asyncio.gather(*(close_one(ws) for ws in targets))
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

    def _auth_refusal(self, connection: ServerConnection, request: Request,
                      what: str) -> Response | None:
        """None when the request may go on; else 401, or 429 for an address that failed
        too often (checked first, so a throttled guess is never even compared)."""
        token = self.config.auth_token
        if token is None:
            return None
        addr = address_of(connection.remote_address)
        now = time.monotonic()
        wait = self.auth_limiter.retry_after(addr, now)
        if wait is not None:
            self.counters.auth_throttled += 1
            return _too_many(wait)
        if token_matches(token, offered_tokens(request.path, request.headers)):
            return None
        self.auth_limiter.failed(addr, now)
        self.counters.auth_failures += 1
        log.warning("unauthorized request", path=what, remote=addr)
        return _response(http.HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n",
                         "text/plain")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, "ok\n", "text/plain")
        if path == "/readyz":
            free = self.engine.free_slots()
            alive = self.tick_thread_alive()
            ready = self.engine.ready and alive and free > 0 and not self._closing
            reason = ("ok" if ready else "closing" if self._closing
                      else "warming up" if not self.engine.ready
                      else "engine tick thread is not running" if not alive
                      else "no free slot")
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _json(status, {"ready": ready, "reason": reason, "free_slots": free})
        if path == "/capacity":
            free = self.engine.free_slots()
            return _json(http.HTTPStatus.OK, {
                "slots": self.engine.slots, "free_slots": free,
                "active_slots": self.engine.slots - free, "ready": self.engine.ready,
            })
        if path == "/metrics":
            refusal = self._auth_refusal(connection, request, path)
            if refusal is not None:
                return refusal
            return _response(http.HTTPStatus.OK, render(self._registry), CONTENT_TYPE)
        if path == "/api/chat":
            refusal = self._auth_refusal(connection, request, path)
            if refusal is not None:
                return refusal
            if self._closing:
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n",
                                 "text/plain")
            return None  # go on with the WebSocket upgrade
        return _response(http.HTTPStatus.NOT_FOUND,
                         "not found: try /api/chat, /healthz, /readyz, /capacity, /metrics\n",
                         "text/plain")

    # -- /api/chat -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        call_id = f"srv-{uuid.uuid4().hex[:12]}"
        clog = log.bind(call_id=call_id, remote=str(ws.remote_address))
        self.counters.connections += 1
        call = EngineCall(self.engine, call_id, max_queued=self.config.max_queued_outputs)
        try:
            async with self._slot(call) as slot:
                clog = clog.bind(slot=slot.index)
                self._calls.add(call)
                self._connections[call_id] = ws
                self.counters.active_connections += 1
                try:
                    await self._serve_call(ws, call, call_id, clog)
                finally:
                    self._calls.discard(call)
                    self._connections.pop(call_id, None)
                    self.counters.active_connections -= 1
                    reason = (self._ending.pop(call_id) if call_id in self._ending
                              else _closed_by(ws))
                    self.counters.closed[reason.value] += 1
                clog.info("call ended", reason=reason.value,
                          dropped_outputs=call.dropped_outputs, underruns=slot.underruns,
                          overruns=slot.overruns)
        except ServerBusyError as exc:
            self.counters.refused_busy += 1
            clog.info("call refused: server busy")
            with contextlib.suppress(ConnectionClosed):
                await ws.send(protocol.encode(protocol.ErrorMessage(f"server busy: {exc}")))
                await ws.close(CLOSE_BUSY, "server busy")
        finally:
            if self._closing:
                with contextlib.suppress(Exception):
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down")

    @contextlib.asynccontextmanager
    async def _slot(self, call: EngineCall) -> AsyncIterator[Any]:
        """The call's slot, released on every way out (exceptions, cancellation, a log
        call that fails): nothing runs between taking it and the ``try``."""
        slot = await call.open(self.config.admission_wait_s)
        try:
            yield slot
        finally:
            call.close()

    async def _serve_call(self, ws: ServerConnection, call: EngineCall, call_id: str,
                          clog: SafeLogger) -> None:
        loop = asyncio.get_running_loop()
        guard = CallGuard(self.config.limits, loop.time())
        sender: asyncio.Task[CloseReason | None] | None = None
        watchdog: asyncio.Task[None] | None = None
        try:
            await ws.send(protocol.encode(protocol.Handshake(0, 0)))
            await ws.send(protocol.encode(protocol.Metadata({
                "instance_name": self.config.instance_name,
                "server": "voice-server-moshi",
                "slots": self.engine.slots,
                "model": self.engine.models.description,
            })))
            clog.info("call started")
            sender = asyncio.create_task(self._send_loop(ws, call, clog), name=f"send:{call_id}")
            watchdog = asyncio.create_task(self._watchdog(ws, call, guard, call_id, clog),
                                           name=f"watchdog:{call_id}")
            reap = await self._receive_loop(ws, call, guard, clog)
            if reap is not None:
                await self._reap(ws, call, call_id, reap, clog)
            elif call.slot is not None and call.slot.closed:
                # The engine ended the call under us: give the sender the moment it needs
                # to send the engine's error and close with 1011 before it is cancelled.
                await asyncio.wait({sender}, timeout=2.0)
        except ConnectionClosed:
            pass
        finally:
            call.close()
            for task in (watchdog, sender):
                if task is not None:
                    task.cancel()
            if sender is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    ended = await sender
                    if ended is not None:
                        self._ending.setdefault(call_id, ended)
            if watchdog is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watchdog

    async def _reap(self, ws: ServerConnection, call: EngineCall, call_id: str, reap: Reap,
                    clog: SafeLogger) -> None:
        """End a call for ``reap``'s reason: free its slot at once, then send the ``0x05``
        text and the close frame (which a dead peer may take ``close_timeout_s`` over)."""
        call.close()
        if ws.state is not State.OPEN:
            return  # already closing: keepalive, the client or the operator came first
        if self._ending.setdefault(call_id, reap.reason) is not reap.reason:
            return  # already being closed for another reason
        clog.info("closing the call", reason=reap.reason.value, code=reap.code,
                  message=reap.message)
        with contextlib.suppress(Exception):
            # Bounded: a client that reads nothing must not hold the close up.
            await asyncio.wait_for(
                ws.send(protocol.encode(protocol.ErrorMessage(reap.message))), 1.0)
        with contextlib.suppress(Exception):
            await ws.close(reap.code, reap.reason.value)

    async def _watchdog(self, ws: ServerConnection, call: EngineCall, guard: CallGuard,
                        call_id: str, clog: SafeLogger) -> None:
        """Fires the call's timeouts (first audio, no input, maximum length)."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = guard.next_deadline()
            if deadline is None:
                await asyncio.sleep(3600)  # woken by cancellation; nothing to watch
                continue
            delay = deadline - loop.time()
            if delay > 0:
                # Deadlines only move later as audio arrives: sleep, then look again.
                await asyncio.sleep(delay)
                continue
            reap = guard.check_timeouts(loop.time())
            if reap is not None:
                await self._reap(ws, call, call_id, reap, clog)
                return
            await asyncio.sleep(0.01)

    async def _receive_loop(self, ws: ServerConnection, call: EngineCall, guard: CallGuard,
                            clog: SafeLogger) -> Reap | None:
        """Feeds the engine; returns a :class:`Reap` when the client broke a limit."""
        loop = asyncio.get_running_loop()
        decoder = OpusDecoder(SAMPLE_RATE)
        framer = SampleFramer(FRAME_SAMPLES, np.float32)
        async for raw in ws:
            data = raw.encode("utf-8") if isinstance(raw, str) else raw
            self.counters.messages_in += 1
            now = loop.time()
            reap = guard.on_message(now)
            if reap is not None:
                return reap
            try:
                msg = protocol.decode(data, max_size=self.config.max_message_bytes)
            except protocol.ProtocolError as exc:
                self.counters.protocol_errors += 1
                reap = guard.on_malformed()
                if reap is not None:
                    return reap
                clog.info("malformed message skipped", error=str(exc))
                await ws.send(protocol.encode(protocol.ErrorMessage(f"malformed message: {exc}")))
                continue
            if not isinstance(msg, protocol.Audio):
                # Control, ping, metadata and unknown kinds: nothing to do in a full-duplex
                # call (protocol.md: discard what you do not use).
                continue
            before = guard.audio_s
            reap = guard.before_audio(msg.data, now)
            self.counters.audio_in_s += guard.audio_s - before
            if reap is not None:
                return reap  # refused before it cost a decode
            try:
                pcm = decoder.decode(msg.data)
            except Exception as exc:  # sphn raises its own errors on corrupt streams
                self.counters.protocol_errors += 1
                return Reap(CloseReason.BAD_AUDIO, CLOSE_BAD_PAYLOAD,
                            f"invalid Ogg/Opus audio (24 kHz mono expected): {exc}")
            reap = guard.after_audio(len(pcm) / SAMPLE_RATE, loop.time())
            if reap is not None:
                return reap
            for frame in framer.push(pcm):
                try:
                    call.send(frame)
                except RuntimeError:
                    return None  # the engine closed this call; the sender reports why
        return None

    async def _send_loop(self, ws: ServerConnection, call: EngineCall,
                         clog: SafeLogger) -> CloseReason | None:
        try:
            return await self._send_outputs(ws, call, clog)
        except Exception as exc:
            # Never leave a call half alive: no more audio would come, so end it.
            clog.exception("sending to the client failed; closing the call")
            with contextlib.suppress(Exception):
                await ws.send(protocol.encode(protocol.ErrorMessage(f"server error: {exc}")))
                await ws.close(CLOSE_INTERNAL, "server error")
            return CloseReason.SEND_FAILED

    async def _send_outputs(self, ws: ServerConnection, call: EngineCall,
                            clog: SafeLogger) -> CloseReason | None:
        encoder = OpusEncoder(SAMPLE_RATE)
        async for ev in call.events():
            if isinstance(ev, SlotError):
                clog.warning("engine failed the call", error=ev.message)
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(protocol.encode(protocol.ErrorMessage(ev.message)))
                    await ws.close(CLOSE_INTERNAL, "engine error")
                return CloseReason.ENGINE
            assert isinstance(ev, SlotOutput)
            ogg = encoder.encode(ev.pcm)
            try:
                if ogg:
                    await ws.send(protocol.encode(protocol.Audio(ogg)))
                    self.counters.audio_frames_out += 1
                if ev.text:
                    await ws.send(protocol.encode(protocol.Text(ev.text)))
            except ConnectionClosed:
                return None
        return None


def _closed_by(ws: ServerConnection) -> CloseReason:
    """Why a connection ended that the server did not end on purpose."""
    sent = ws.protocol.close_sent
    if sent is not None and sent.reason == "keepalive ping timeout":
        return CloseReason.KEEPALIVE
    if sent is not None and sent.code == 1009:
        return CloseReason.TOO_BIG
    return CloseReason.CLIENT


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

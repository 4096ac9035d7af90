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
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .._log import get_logger
from ..audio.framing import SampleFramer
from ..audio.opus import OpusDecoder, OpusEncoder
from ..engine.core import FRAME_SAMPLES, Engine, SlotError, SlotOutput
from ..engine.session import EngineCall
from ..errors import ServerBusyError
from ..moshi import protocol
from .metrics import ServerCounters, render_metrics

log = get_logger(__name__)

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
        return f"ServerConfig(host={self.host!r}, port={self.port}, auth_token={tok})"


def _response(status: http.HTTPStatus, body: str, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body.encode()))
    headers["Cache-Control"] = "no-store"
    # websockets closes the TCP connection after a process_request response; say so, or
    # keep-alive clients (httpx, Prometheus) race a reused, already-closed connection.
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body.encode())


def _json(status: http.HTTPStatus, obj: Any) -> Response:
    return _response(status, json.dumps(obj) + "\n", "application/json")


class BatchedServer:
    """Serves ``engine`` on Kyutai's protocol. Start with :meth:`start`, stop with
    :meth:`close`; the engine's tick thread must be running (``engine.start()``)."""

    def __init__(self, engine: Engine, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.counters = ServerCounters()
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

    def _authorized(self, request: Request) -> bool:
        token = self.config.auth_token
        if token is None:
            return True
        offered: list[str] = []
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        if "kyutai-api-key" in request.headers:  # the header Kyutai's Rust server reads
            offered.append(request.headers["kyutai-api-key"])
        # Browsers cannot set headers on a WebSocket: allow ?auth_token= as well.
        offered += parse_qs(urlsplit(request.path).query).get("auth_token", [])
        return any(hmac.compare_digest(o.encode(), token.encode()) for o in offered)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, "ok\n", "text/plain")
        if path == "/readyz":
            free = self.engine.free_slots()
            ready = self.engine.ready and free > 0 and not self._closing
            reason = ("ok" if ready else "closing" if self._closing
                      else "warming up" if not self.engine.ready else "no free slot")
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _json(status, {"ready": ready, "reason": reason, "free_slots": free})
        if path == "/capacity":
            free = self.engine.free_slots()
            return _json(http.HTTPStatus.OK, {
                "slots": self.engine.slots, "free_slots": free,
                "active_slots": self.engine.slots - free, "ready": self.engine.ready,
            })
        if path == "/metrics":
            if not self._authorized(request):
                return _response(http.HTTPStatus.UNAUTHORIZED, "unauthorized\n", "text/plain")
            text = render_metrics(self.engine.metrics(), self.counters)
            return _response(http.HTTPStatus.OK, text, "text/plain; version=0.0.4")
        if path == "/api/chat":
            if not self._authorized(request):
                self.counters.auth_failures += 1
                log.warning("unauthorized /api/chat request",
                            remote=str(connection.remote_address))
                return _response(http.HTTPStatus.UNAUTHORIZED,
                                 "missing or wrong bearer token\n", "text/plain")
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
            await call.open(self.config.admission_wait_s)
        except ServerBusyError as exc:
            self.counters.refused_busy += 1
            clog.info("call refused: server busy")
            with contextlib.suppress(ConnectionClosed):
                await ws.send(protocol.encode(protocol.ErrorMessage(f"server busy: {exc}")))
                await ws.close(CLOSE_BUSY, "server busy")
            return
        assert call.slot is not None
        clog = clog.bind(slot=call.slot.index)
        self._calls.add(call)
        self._connections[call_id] = ws
        self.counters.active_connections += 1
        sender: asyncio.Task[None] | None = None
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
            await self._receive_loop(ws, call, clog)
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
                with contextlib.suppress(Exception):
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down")
            clog.info("call ended", dropped_outputs=call.dropped_outputs,
                      underruns=call.slot.underruns, overruns=call.slot.overruns)

    async def _receive_loop(self, ws: ServerConnection, call: EngineCall, clog: Any) -> None:
        decoder = OpusDecoder(SAMPLE_RATE)
        framer = SampleFramer(FRAME_SAMPLES, np.float32)
        async for raw in ws:
            data = raw.encode("utf-8") if isinstance(raw, str) else raw
            self.counters.messages_in += 1
            try:
                msg = protocol.decode(data, max_size=self.config.max_message_bytes)
            except protocol.ProtocolError as exc:
                self.counters.protocol_errors += 1
                clog.info("malformed message skipped", error=str(exc))
                await ws.send(protocol.encode(protocol.ErrorMessage(f"malformed message: {exc}")))
                continue
            if not isinstance(msg, protocol.Audio):
                # Control, ping, metadata and unknown kinds: nothing to do in a full-duplex
                # call (protocol.md: discard what you do not use).
                continue
            try:
                pcm = decoder.decode(msg.data)
            except Exception as exc:  # sphn raises its own errors on corrupt streams
                self.counters.protocol_errors += 1
                clog.info("bad Ogg/Opus audio; closing the call", error=str(exc))
                await ws.send(protocol.encode(protocol.ErrorMessage(
                    f"invalid Ogg/Opus audio (24 kHz mono expected): {exc}")))
                await ws.close(CLOSE_BAD_PAYLOAD, "invalid Ogg/Opus audio")
                return
            for frame in framer.push(pcm):
                try:
                    call.send(frame)
                except RuntimeError:
                    return  # the engine closed this call; the sender reports why

    async def _send_loop(self, ws: ServerConnection, call: EngineCall, clog: Any) -> None:
        try:
            await self._send_outputs(ws, call, clog)
        except Exception as exc:
            # Never leave a call half alive: no more audio would come, so end it.
            clog.exception("sending to the client failed; closing the call")
            with contextlib.suppress(Exception):
                await ws.send(protocol.encode(protocol.ErrorMessage(f"server error: {exc}")))
                await ws.close(CLOSE_INTERNAL, "server error")

    async def _send_outputs(self, ws: ServerConnection, call: EngineCall, clog: Any) -> None:
        encoder = OpusEncoder(SAMPLE_RATE)
        async for ev in call.events():
            if isinstance(ev, SlotError):
                clog.warning("engine failed the call", error=ev.message)
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(protocol.encode(protocol.ErrorMessage(ev.message)))
                    await ws.close(CLOSE_INTERNAL, "engine error")
                return
            assert isinstance(ev, SlotOutput)
            ogg = encoder.encode(ev.pcm)
            try:
                if ogg:
                    await ws.send(protocol.encode(protocol.Audio(ogg)))
                    self.counters.audio_frames_out += 1
                if ev.text:
                    await ws.send(protocol.encode(protocol.Text(ev.text)))
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

"""The engine replica's side of the data plane: a WebSocket server on its own thread.

A lease (:mod:`.engine_replica`) reserves a slot with :meth:`EngineDataServer.reserve` and
gets a one-time ticket; the ingress then connects to :attr:`EngineDataServer.url`, sends
the ticket, and streams PCM frames and requests (:mod:`..callpath.wire`, version 1), which
the in-process engine interface (:class:`~..callpath.local.LocalEngine`) applies, exactly as
``serve`` does. The server runs its own event loop on
its own thread so that neither Ray's replica loop nor the engine's tick thread ever waits
on a caller's network. No Ray here: the module is plain asyncio + ``websockets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .._log import get_logger
from .._threads import name_os_thread
from ..callpath import wire
from ..callpath.kinds import CallParams
from ..callpath.local import LocalCall, LocalEngine
from ..callpath.remote import MAX_MESSAGE_BYTES
from ..engine.core import Engine, SlotError
from ..engine.persona import PersonaError
from ..errors import ServerBusyError
from ..server.metrics import ServerCounters, render_metrics
from ..server.responses import json_response, response

log = get_logger(__name__)

T = TypeVar("T")

#: A reservation not claimed by a data connection within this time is released.
ATTACH_TIMEOUT_S = 10.0


@dataclass
class _Reservation:
    call: LocalCall
    ended: asyncio.Future[dict[str, Any]]
    attached: bool = False
    conn: ServerConnection | None = None
    started: float = field(default_factory=time.monotonic)


class EngineDataServer:
    """Serves ``engine``'s slots to ingresses. :meth:`start` binds ``host`` (port 0: any).

    ``direct_reservations``: a connection may reserve a slot itself (``{"call_id": ...}``,
    for ``serve --ingress-workers``, whose data plane is its own process's loopback).
    Off by default: a cluster replica's data plane then takes only the one-time ticket of
    a lease that Serve routed to it, so reaching its port is not enough to take a slot.
    """

    def __init__(self, engine: Engine, host: str, *, port: int = 0,
                 max_queued_outputs: int = 150, direct_reservations: bool = False) -> None:
        self.engine = engine
        self.gateway = LocalEngine(engine, max_queued_outputs=max_queued_outputs)
        self.host = host
        self.direct_reservations = direct_reservations
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="engine-data", daemon=True)
        self._server: Server | None = None
        self._reservations: dict[str, _Reservation] = {}
        #: Data-plane counters: connections, refusals (``/metrics``).
        self.counters = ServerCounters()
        #: Called on the data-plane loop whenever a slot is taken or freed.
        self.on_change: Callable[[], None] | None = None

    # -- lifecycle (any thread) ------------------------------------------------------------

    def _run(self) -> None:
        name_os_thread("engine-data")  # so per-thread CPU shows in /proc (bench cluster)
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self.call_soon(self._start()).result(timeout=30)

    async def _start(self) -> None:
        self._server = await serve(self._handle, self.host, self._port, compression=None,
                                   max_size=MAX_MESSAGE_BYTES, ping_interval=1, ping_timeout=3,
                                   process_request=self._process_request)
        sock = next(iter(self._server.sockets))
        self._port = int(sock.getsockname()[1])
        log.info("engine data plane listening", host=self.host, port=self._port)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self._port}/call"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._server is not None

    def call_soon(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Run ``coro`` on the data-plane loop; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run_on_loop(self, fn: Callable[[], None]) -> None:
        self._loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        async def _stop() -> None:
            for r in list(self._reservations.values()):
                await r.call.aclose()
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call_soon(_stop()).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # -- reservations (run on the data-plane loop via call_soon) ---------------------------

    async def reserve(self, call_id: str, wait_s: float = 0.0,
                      params: CallParams | None = None) -> tuple[str, LocalCall]:
        """Take a free slot for ``call_id`` (waiting up to ``wait_s``) with the call's
        ``params`` over this engine's defaults (with a persona: returns once its prompt
        is in the row); raises ServerBusyError when none frees, SamplingError for sampling
        this engine refuses, PersonaError for a persona or voice it cannot take."""
        call = await self.gateway.open(call_id, params or CallParams(), wait_s)
        ticket = secrets.token_urlsafe(16)
        res = _Reservation(call, self._loop.create_future())
        self._reservations[ticket] = res
        self._loop.call_later(ATTACH_TIMEOUT_S, self._expire, ticket)
        self._changed()
        return ticket, call

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change failed")

    def _expire(self, ticket: str) -> None:
        res = self._reservations.get(ticket)
        if res is not None and not res.attached:
            res.call.call.log.warning("reserved slot never attached; released")
            self._finish(ticket, "never attached")

    async def wait_ended(self, ticket: str) -> dict[str, Any]:
        res = self._reservations.get(ticket)
        if res is None:
            return {"reason": "unknown ticket"}
        return await asyncio.shield(res.ended)

    async def release(self, ticket: str, reason: str) -> None:
        """End the call (its lease went away): close the data connection too."""
        res = self._reservations.get(ticket)
        if res is None:
            return
        if res.conn is not None:
            with contextlib.suppress(Exception):
                await res.conn.close(1001, reason)
        self._finish(ticket, reason)

    def _finish(self, ticket: str, reason: str) -> None:
        res = self._reservations.pop(ticket, None)
        if res is None:
            return
        res.call.call.close()
        self._changed()
        slot = res.call.call.slot
        if not res.ended.done():
            res.ended.set_result({
                "reason": reason, "seconds": round(time.monotonic() - res.started, 3),
                "frames_in": slot.frames_in if slot else 0,
                "frames_out": slot.frames_out if slot else 0,
                "dropped_outputs": res.call.call.dropped_outputs,
            })

    def active(self) -> int:
        return len(self._reservations)

    # -- HTTP for ingresses: what the engine holds -------------------------------------------

    def capacity(self) -> dict[str, Any]:
        free = self.engine.free_slots()
        return {"slots": self.engine.slots, "free_slots": free,
                "active_slots": self.engine.slots - free, "ready": self.engine.ready,
                "model": self.engine.models.description,
                # A front door checks a call's sampling over these (ADR 0080) and its
                # persona against this (ADR 0130).
                "default_sampling": self.engine.default_sampling.as_dict(),
                "persona": self.engine.persona_support.as_dict()}

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/capacity":
            return json_response(http.HTTPStatus.OK, self.capacity())
        if path == "/metrics":
            self.counters.active_connections = self.active()
            text = render_metrics(self.engine.metrics(), self.counters)
            return response(http.HTTPStatus.OK, text, "text/plain; version=0.0.4")
        if path == "/call":
            return None
        return response(http.HTTPStatus.NOT_FOUND, "not found\n", "text/plain")

    # -- data connections ------------------------------------------------------------------

    async def _handle(self, conn: ServerConnection) -> None:
        """First message: the hello (:mod:`..callpath.wire`): a ticket a lease reserved,
        or a call id to reserve for now (ingresses without a lease: ``serve
        --ingress-workers``), where a full engine answers ``0x15`` "server busy: ..." and
        close 1013. The grant (text) confirms the call; then frames and requests."""
        try:
            hello = wire.decode_hello(await asyncio.wait_for(conn.recv(), ATTACH_TIMEOUT_S))
            if hello.call_id is not None:
                if not self.direct_reservations:
                    raise wire.WireError("this data plane takes a lease's ticket only")
                ticket, _ = await self.reserve(hello.call_id, hello.wait_s, hello.params)
            else:
                ticket = str(hello.ticket)
        except ServerBusyError as exc:
            self.counters.refused_busy += 1
            await self._refuse(conn, f"server busy: {exc}", 1013, "server busy")
            return
        except PersonaError as exc:  # before the ValueError below: the reason goes back
            await self._refuse(conn, f"{wire.PERSONA_REFUSED}{exc}", 1008, "bad request")
            return
        except (ValueError, TimeoutError, ConnectionClosed) as exc:  # WireError, SamplingError
            self.counters.protocol_errors += 1
            await self._refuse(conn, f"bad hello: {exc}", 1008, "bad hello")
            return
        res = self._reservations.get(ticket)
        if res is None or res.attached:
            self.counters.protocol_errors += 1
            await self._refuse(conn, "unknown or used ticket", 1008, "unknown or used ticket")
            return
        res.attached, res.conn = True, conn
        self.counters.connections += 1
        reason = "ingress closed"
        sender: asyncio.Task[None] | None = None
        try:
            await conn.send(wire.encode_grant(res.call.grant))
            sender = asyncio.create_task(self._send(conn, res.call))
            reason = await self._receive(conn, res.call, sender)
        except ConnectionClosed:
            pass
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            self._finish(ticket, reason)

    async def _refuse(self, conn: ServerConnection, message: str, code: int,
                      reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.send(wire.encode_event(SlotError(message)))
            await conn.close(code, reason)

    async def _receive(self, conn: ServerConnection, call: LocalCall,
                       sender: asyncio.Task[None]) -> str:
        """Apply the front door's frames and requests until it goes; returns why."""
        async for raw in conn:
            try:
                if not isinstance(raw, bytes):
                    raise wire.WireError("text message after the hello")
                item = wire.decode_request(raw)
            except wire.WireError as exc:
                await self._refuse(conn, f"bad data-plane message: {exc}", 1007,
                                   "bad data-plane message")
                return f"bad data-plane message: {exc}"
            if isinstance(item, np.ndarray):
                if not await call.send_frame(item):
                    break  # the engine closed the call; the sender reports why
            else:
                answer = await call.request(item)
                if answer is not None:
                    await conn.send(wire.encode_event(answer))
        if call.call.closed:
            await asyncio.wait({sender}, timeout=2.0)
            return "engine ended the call"
        return "ingress closed"

    async def _send(self, conn: ServerConnection, call: LocalCall) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for ev in call.events():
                await conn.send(wire.encode_event(ev))
                if isinstance(ev, SlotError):
                    await conn.close(1011, "engine error")
                    return

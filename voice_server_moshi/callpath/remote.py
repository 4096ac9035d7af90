"""The engine interface's second implementation: a data-plane client to an engine in
another process (``serve --ingress-workers``) or replica (the cluster), wire format
:mod:`.wire`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import replace
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..engine.persona import PersonaError
from ..engine.slot import SlotError
from ..errors import ServerBusyError
from . import wire
from .kinds import PCM, CallClosed, CallEvent, CallParams, CallRequest, Grant, SteerAnswer

__all__ = ["RemoteCall", "RemoteEngine", "connect_call"]

#: A data-plane message's largest size: an output frame, or a say-audio clip (ADR 0070
#: caps clips far below this).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
REPLICA_LOST = "engine replica lost; please call again"


class RemoteCall:
    """A :class:`~.kinds.CallLink` over one data connection. ``lease_end``: an awaitable
    that raises when the engine's host is lost (the cluster's lease), so a dead replica
    ends its calls at once."""

    def __init__(self, data: ClientConnection, grant: Grant,
                 lease_end: Awaitable[Any] | None = None) -> None:
        self.data = data
        self.grant = grant
        #: True when the engine was lost mid-call (not an orderly end).
        self.lost = False
        self._closing = False
        self._watch = (asyncio.ensure_future(self._watch_lease(lease_end))
                       if lease_end is not None else None)

    async def _watch_lease(self, lease_end: Awaitable[Any]) -> None:
        try:
            await lease_end
        except asyncio.CancelledError:
            raise
        except Exception:
            self.lost = True
            self.data.transport.abort()  # the replica died: end the data connection now

    async def send_frame(self, pcm: PCM) -> bool:
        try:
            await self.data.send(wire.encode_frame(pcm))
        except ConnectionClosed:
            return False
        return True

    async def request(self, req: CallRequest) -> SteerAnswer | None:
        with contextlib.suppress(ConnectionClosed):
            await self.data.send(wire.encode_request(req))
        return None  # the engine answers on the data connection

    async def events(self) -> AsyncIterator[CallEvent]:
        try:
            async for raw in self.data:
                if not isinstance(raw, bytes):
                    continue
                ev = wire.decode_event(raw)
                yield ev
                if isinstance(ev, SlotError):
                    return
        except ConnectionClosed:
            pass
        if self._closing:
            return  # this side left the call: nothing more to say
        # A close frame from the engine (1000/1001) is an orderly end; anything else (no
        # close frame: 1006) means the engine or its host went away.
        if not self.lost and self.data.close_code in (1000, 1001):
            yield CallClosed(1001, "engine replica stopped")
        else:
            self.lost = True
            yield SlotError(REPLICA_LOST)

    async def aclose(self) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
        with contextlib.suppress(Exception):
            await self.data.close()


async def connect_call(url: str, hello: wire.Hello, *, lease_end: Awaitable[Any] | None = None,
                       extra: Mapping[str, Any] | None = None,
                       ping_interval: float | None = None) -> RemoteCall:
    """Open a data connection, say hello, read the grant (with a persona: once its prompt
    is in the row). A full engine, or one that cannot be reached, raises ServerBusyError;
    a persona or voice the engine refused, PersonaError."""
    try:
        data = await websockets.connect(url, compression=None, proxy=None, open_timeout=5,
                                        ping_interval=ping_interval, ping_timeout=3,
                                        max_size=MAX_MESSAGE_BYTES)
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        raise ServerBusyError(f"engine unreachable ({exc}); try again later") from None
    try:
        await data.send(wire.encode_hello(hello))
        first = await data.recv()
        if isinstance(first, bytes):
            ev = wire.decode_event(first)
            message = ev.message if isinstance(ev, SlotError) else "engine refused the call"
            if message.startswith(wire.PERSONA_REFUSED):
                raise PersonaError(message.removeprefix(wire.PERSONA_REFUSED))
            raise ServerBusyError(message.removeprefix("server busy: "))
        grant = wire.decode_grant(first)
    except (ConnectionClosed, TimeoutError, wire.WireError) as exc:
        await data.close()
        raise ServerBusyError(f"engine unreachable ({exc}); try again later") from None
    except (ServerBusyError, PersonaError):
        await data.close()
        raise
    if extra:
        grant = replace(grant, extra={**grant.extra, **extra})
    return RemoteCall(data, grant, lease_end)


class RemoteEngine:
    """An :class:`~.kinds.EngineGateway` over an engine's data plane at ``url`` (``serve
    --ingress-workers``: each call takes its slot with its hello)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, call_id: str, params: CallParams, wait_s: float) -> RemoteCall:
        return await connect_call(self.url, wire.Hello(call_id=call_id, wait_s=wait_s,
                                                       params=params))

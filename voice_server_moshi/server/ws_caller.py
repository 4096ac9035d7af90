"""The caller's socket on ``websockets`` (``serve`` and its ingress workers): the shell
the server-side call (:mod:`..callpath.server_call`) reads from and writes to."""

from __future__ import annotations

import contextlib

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..callpath.server_call import CallerGone
from .limits import CloseReason
from .reaper import closed_by

__all__ = ["WsCaller"]


class WsCaller:
    """:class:`~..callpath.server_call.CallerSocket` over a ``websockets`` connection."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def receive(self) -> bytes | str | None:
        try:
            return await self.ws.recv()
        except ConnectionClosed:
            return None

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise CallerGone() from exc

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, reason)

    def closed_reason(self) -> CloseReason | None:
        return None if self.ws.state is State.OPEN else closed_by(self.ws)

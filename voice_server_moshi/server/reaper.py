"""The I/O half of a call's limits: a task that fires :class:`~.limits.CallGuard`'s
timeouts on the event loop's clock, and why a connection ended when the server did not
end it on purpose (keepalive, size limit, the client)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import ServerConnection

from .limits import CallGuard, CloseReason, Reap

__all__ = ["closed_by", "watch_timeouts"]

#: What websockets sends when a peer misses its keepalive pong.
_KEEPALIVE_REASON = "keepalive ping timeout"
_MESSAGE_TOO_BIG = 1009


async def watch_timeouts(guard: CallGuard, reap: Callable[[Reap], Awaitable[None]]) -> None:
    """Sleep until the guard's next deadline, check, repeat; ``reap`` the first timeout.
    Deadlines only move later as audio arrives, so sleeping to the old one is safe."""
    loop = asyncio.get_running_loop()
    while True:
        deadline = guard.next_deadline()
        if deadline is None:
            await asyncio.sleep(3600)  # nothing to watch; ended by cancellation
            continue
        delay = deadline - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            continue
        verdict = guard.check_timeouts(loop.time())
        if verdict is not None:
            await reap(verdict)
            return
        await asyncio.sleep(0.01)


async def first_timeout(guard: CallGuard) -> Reap | None:
    """The guard's first timeout (first audio, no input, call length), when it fires."""
    fired: list[Reap] = []

    async def keep(reap: Reap) -> None:
        fired.append(reap)

    await watch_timeouts(guard, keep)
    return fired[0] if fired else None


def closed_by(ws: ServerConnection) -> CloseReason:
    """Why a connection ended that the server did not end on purpose."""
    sent = ws.protocol.close_sent
    if sent is not None and sent.reason == _KEEPALIVE_REASON:
        return CloseReason.KEEPALIVE
    if sent is not None and sent.code == _MESSAGE_TOO_BIG:
        return CloseReason.TOO_BIG
    return CloseReason.CLIENT

"""One Kyutai-protocol call relayed to an engine replica's data plane, no Ray here.

The caller side is any WebSocket behind :class:`CallerSocket` (Starlette under Ray Serve,
or ``websockets``); the engine side is a ``websockets`` client connection to
:mod:`.engine_side`. Opus and the protocol run here, in the ingress, off the engine's tick
thread (ADR 0095).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..audio.framing import SampleFramer
from ..audio.opus import OpusDecoder, OpusEncoder
from ..moshi import protocol
from . import wire

SAMPLE_RATE = 24000
CLOSE_BUSY = 1013
CLOSE_BAD_PAYLOAD = 1007
CLOSE_INTERNAL = 1011
CLOSE_GOING_AWAY = 1001


class CallerGone(Exception):
    """The caller's WebSocket closed."""


class CallerSocket(Protocol):
    async def receive(self) -> bytes | None:
        """The next message (text as UTF-8), None when the caller has gone."""

    async def send(self, data: bytes) -> None:
        """Send one binary message; raises CallerGone when closed."""

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class IngressCounters:
    """Ingress-side counters (event loop only)."""

    connections: int = 0
    active_calls: int = 0
    refused_busy: int = 0
    auth_failures: int = 0
    messages_in: int = 0
    protocol_errors: int = 0
    audio_frames_out: int = 0
    replica_failures: int = 0
    engine_errors: int = 0
    routed: int = 0
    routing_seconds_sum: float = 0.0


async def refuse_busy(caller: CallerSocket, detail: str) -> None:
    """What ``serve`` does when every slot is taken: ``0x05`` then close 1013."""
    with contextlib.suppress(CallerGone, Exception):
        await caller.send(protocol.encode(protocol.ErrorMessage(f"server busy: {detail}")))
        await caller.close(CLOSE_BUSY, "server busy")


async def relay_call(caller: CallerSocket, data: ClientConnection, *,
                     metadata: dict[str, Any], lease_end: Awaitable[Any],
                     counters: IngressCounters, clog: Any,
                     max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES) -> str:
    """Run the call until it ends; returns why it ended. The caller sees Kyutai's Rust
    handshake and a ``0x04`` metadata message first. If the engine replica is lost (its
    data connection drops, or ``lease_end`` raises) the caller gets ``0x05`` and 1011."""
    await caller.send(protocol.encode(protocol.Handshake(0, 0)))
    await caller.send(protocol.encode(protocol.Metadata(metadata)))
    up = asyncio.create_task(_uplink(caller, data, counters, clog, max_message_bytes))
    down = asyncio.create_task(_downlink(caller, data, counters))
    lease = asyncio.ensure_future(lease_end)
    outcome = "ended"
    try:
        done, _ = await asyncio.wait({up, down, lease}, return_when=asyncio.FIRST_COMPLETED)
        if up in done:
            outcome = up.result()
        elif down in done:
            outcome = down.result()
            if outcome == "replica lost":
                # The lease may say why (Ray's actor-died error) within a moment.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(lease), 0.05)
        elif lease.exception() is not None:
            outcome = "replica lost"
        else:
            # The lease ended normally: the replica closed the call on its side.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({down}, timeout=1.0)
            outcome = down.result() if down.done() else "lease ended"
        if outcome == "replica lost":
            counters.replica_failures += 1
            clog.warning("engine replica lost mid-call", lease_error=_exc_name(lease))
            await _fail(caller, "engine replica lost; please call again")
        elif outcome == "engine error":
            counters.engine_errors += 1
        elif outcome in ("replica closed the call", "lease ended"):
            with contextlib.suppress(CallerGone, Exception):
                await caller.close(CLOSE_GOING_AWAY, "engine replica stopped")
        return outcome
    finally:
        for t in (up, down, lease):
            t.cancel()
        for t in (up, down):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await data.close()


def _exc_name(fut: asyncio.Future[Any]) -> str | None:
    if not fut.done() or fut.cancelled() or fut.exception() is None:
        return None
    return type(fut.exception()).__name__


async def _fail(caller: CallerSocket, message: str) -> None:
    with contextlib.suppress(CallerGone, Exception):
        await caller.send(protocol.encode(protocol.ErrorMessage(message)))
        await caller.close(CLOSE_INTERNAL, "engine error")


async def _uplink(caller: CallerSocket, data: ClientConnection, counters: IngressCounters,
                  clog: Any, max_message_bytes: int) -> str:
    decoder = OpusDecoder(SAMPLE_RATE)
    framer = SampleFramer(wire.FRAME_SAMPLES, np.float32)
    while True:
        raw = await caller.receive()
        if raw is None:
            return "caller closed"
        counters.messages_in += 1
        try:
            msg = protocol.decode(raw, max_size=max_message_bytes)
        except protocol.ProtocolError as exc:
            counters.protocol_errors += 1
            clog.info("malformed message skipped", error=str(exc))
            with contextlib.suppress(CallerGone):
                await caller.send(protocol.encode(
                    protocol.ErrorMessage(f"malformed message: {exc}")))
            continue
        if not isinstance(msg, protocol.Audio):
            continue  # control, ping, metadata, unknown kinds: nothing to do
        try:
            pcm = decoder.decode(msg.data)
        except Exception as exc:  # sphn raises its own errors on corrupt streams
            counters.protocol_errors += 1
            clog.info("bad Ogg/Opus audio; closing the call", error=str(exc))
            with contextlib.suppress(CallerGone, Exception):
                await caller.send(protocol.encode(protocol.ErrorMessage(
                    f"invalid Ogg/Opus audio (24 kHz mono expected): {exc}")))
                await caller.close(CLOSE_BAD_PAYLOAD, "invalid Ogg/Opus audio")
            return "bad audio"
        for frame in framer.push(pcm):
            try:
                await data.send(wire.encode_frame(frame))
            except ConnectionClosed:
                return "replica lost"


async def _downlink(caller: CallerSocket, data: ClientConnection,
                    counters: IngressCounters) -> str:
    encoder = OpusEncoder(SAMPLE_RATE)
    try:
        async for raw in data:
            if not isinstance(raw, bytes):
                continue
            reply = wire.decode_reply(raw)
            if isinstance(reply, wire.EngineFailure):
                await _fail(caller, reply.message)
                return "engine error"
            ogg = encoder.encode(reply.pcm)
            if ogg:
                await caller.send(protocol.encode(protocol.Audio(ogg)))
                counters.audio_frames_out += 1
            if reply.text:
                await caller.send(protocol.encode(protocol.Text(reply.text)))
    except CallerGone:
        return "caller closed"
    except ConnectionClosed:
        pass
    # A close frame from the replica (1000/1001) is an orderly end; anything else (no
    # close frame: 1006) means the replica or its host went away.
    if data.close_code in (1000, 1001):
        return "replica closed the call"
    return "replica lost"

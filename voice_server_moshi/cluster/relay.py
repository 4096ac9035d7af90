"""One Kyutai-protocol call relayed to an engine replica's data plane, no Ray here.

The protocol is the sans-I/O :class:`~voice_server_moshi.moshi.session.ServerSession`,
the same as ``serve``'s; this module is its shell between two sockets: the caller's (any
WebSocket behind :class:`CallerSocket`: Starlette under Ray Serve, or ``websockets``) and
a ``websockets`` client connection to the replica's data plane (:mod:`.engine_side`).
Opus runs here, in the ingress, off the engine's tick thread (ADR 0095). The call's limits
(:class:`~voice_server_moshi.server.limits.CallGuard`: timeouts, message rate, audio ahead
of real time counted before decoding, malformed messages) are enforced here too, as in
``serve``, so an abusive caller is closed at the front door and never costs a decode.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..audio.framing import SampleFramer
from ..audio.opus import OpusDecoder, OpusEncoder
from ..engine.call_sampling import (
    SAMPLING_KEYS,
    CallSampling,
    SamplingError,
    parse_sampling_query,
)
from ..moshi.session import (
    CLOSE_GOING_AWAY,
    AudioReceived,
    CloseFrame,
    MalformedReceived,
    QueryError,
    ServerSession,
)
from ..server.limits import CallGuard, CallLimits, Reap
from ..server.metadata import call_metadata
from ..server.reaper import watch_timeouts
from . import wire

SAMPLE_RATE = 24000


class CallerGone(Exception):
    """The caller's WebSocket closed."""


class CallerSocket(Protocol):
    async def receive(self) -> bytes | str | None:
        """The next message; None when the caller has gone."""

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
    #: Calls closed for a limit (timeouts, rate, audio ahead, malformed; ADR 0065).
    calls_reaped: int = 0


def sampling_params(query: Mapping[str, str]) -> Mapping[str, Any]:
    """A session's ``query_parser``: Kyutai's per-call sampling query parameters (ADR
    0080), checked here so a bad value is refused before a slot is taken; the engine side
    applies them over its own defaults and draws the seeds."""
    try:
        parse_sampling_query(query, CallSampling())
    except SamplingError as exc:
        raise QueryError(str(exc)) from None
    return {"sampling_query": {k: query[k] for k in SAMPLING_KEYS if k in query}}


def granted_metadata(granted: Mapping[str, Any], *, instance_name: str,
                     extra: dict[str, Any]) -> dict[str, Any]:
    """``serve``'s ``0x04`` metadata (Kyutai's Rust schema with the call's applied
    sampling and seeds, then ours) from what the engine side granted."""
    return call_metadata(CallSampling(**granted["sampling"]),
                         lm_model_file=str(granted.get("lm_model_file", "")),
                         mimi_model_file=str(granted.get("mimi_model_file", "")),
                         instance_name=instance_name,
                         extra={"model": granted.get("model"), "per_call_sampling": True,
                                **extra})


async def flush(caller: CallerSocket, session: ServerSession) -> None:
    """Send what the session queued, in order; a CloseFrame closes the caller."""
    for item in session.data_to_send():
        if isinstance(item, CloseFrame):
            await caller.close(item.code, item.reason)
        else:
            await caller.send(item)


async def flush_quietly(caller: CallerSocket, session: ServerSession) -> None:
    with contextlib.suppress(CallerGone):
        await flush(caller, session)


async def relay_call(caller: CallerSocket, session: ServerSession, data: ClientConnection, *,
                     lease_end: Awaitable[Any], counters: IngressCounters,
                     clog: Any, limits: CallLimits) -> str:
    """Start ``session`` (handshake, metadata) and run the call until it ends; returns why.
    If the engine replica is lost (its data connection drops, or ``lease_end`` raises) the
    caller gets ``0x05`` and 1011, like any engine failure in ``serve``. A call over one of
    its ``limits`` gets ``0x05`` saying which, and that limit's close code."""
    session.start()
    guard = CallGuard(limits, asyncio.get_running_loop().time())
    await flush(caller, session)
    up = asyncio.create_task(_uplink(caller, session, data, counters, clog, guard))
    down = asyncio.create_task(_downlink(caller, session, data, counters))
    lease = asyncio.ensure_future(lease_end)
    timer = asyncio.create_task(_first_timeout(guard))
    outcome = "ended"
    try:
        done, _ = await asyncio.wait({up, down, lease, timer},
                                     return_when=asyncio.FIRST_COMPLETED)
        verdict = (up.result() if up in done else timer.result() if timer in done else None)
        if isinstance(verdict, Reap):
            counters.calls_reaped += 1
            clog.info("closing the call", reason=verdict.reason.value, code=verdict.code,
                      message=verdict.message)
            session.fail(verdict.message, code=verdict.code, reason=verdict.reason.value)
            await flush_quietly(caller, session)
            return verdict.reason.value
        if up in done:
            outcome = str(verdict)
        elif down in done:
            outcome = down.result()
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
            session.fail("engine replica lost; please call again", reason="engine replica lost")
        elif outcome == "engine error":
            counters.engine_errors += 1
        elif outcome in ("replica closed the call", "lease ended"):
            session.close(CLOSE_GOING_AWAY, "engine replica stopped")
        await flush_quietly(caller, session)
        return outcome
    finally:
        for t in (up, down, lease, timer):
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


async def _first_timeout(guard: CallGuard) -> Reap | None:
    """The guard's first timeout (first audio, no input, call length), when it fires."""
    fired: list[Reap] = []

    async def keep(reap: Reap) -> None:
        fired.append(reap)

    await watch_timeouts(guard, keep)
    return fired[0] if fired else None


async def _uplink(caller: CallerSocket, session: ServerSession, data: ClientConnection,
                  counters: IngressCounters, clog: Any,
                  guard: CallGuard) -> str | Reap:
    loop = asyncio.get_running_loop()
    decoder = OpusDecoder(SAMPLE_RATE)
    framer = SampleFramer(wire.FRAME_SAMPLES, np.float32)
    while True:
        raw = await caller.receive()
        if raw is None:
            return "caller closed"
        counters.messages_in += 1
        now = loop.time()
        reap = guard.on_message(now)
        if reap is not None:
            return reap
        for ev in session.receive_data(raw):
            if isinstance(ev, MalformedReceived):
                counters.protocol_errors += 1
                reap = guard.on_malformed()
                if reap is not None:
                    return reap
                clog.info("malformed message skipped", error=str(ev.error))
            elif isinstance(ev, AudioReceived):
                # Counted from the Ogg headers before decoding: an Opus bomb or a caller
                # far ahead of real time costs no decode.
                reap = guard.before_audio(ev.data, now)
                if reap is not None:
                    return reap
                try:
                    pcm = decoder.decode(ev.data)
                except Exception as exc:  # sphn raises its own errors on corrupt streams
                    counters.protocol_errors += 1
                    clog.info("bad Ogg/Opus audio; closing the call", error=str(exc))
                    session.reject_audio(str(exc))
                    await flush_quietly(caller, session)
                    return "bad audio"
                reap = guard.after_audio(len(pcm) / SAMPLE_RATE, loop.time())
                if reap is not None:
                    return reap
                for frame in framer.push(pcm):
                    try:
                        await data.send(wire.encode_frame(frame))
                    except ConnectionClosed:
                        return "replica lost"
            # Client text, unknown kinds, control, ping: nothing to do here (yet).
        await flush_quietly(caller, session)  # replies to malformed messages


async def _downlink(caller: CallerSocket, session: ServerSession, data: ClientConnection,
                    counters: IngressCounters) -> str:
    encoder = OpusEncoder(SAMPLE_RATE)
    try:
        async for raw in data:
            if not isinstance(raw, bytes):
                continue
            reply = wire.decode_reply(raw)
            if isinstance(reply, wire.EngineFailure):
                session.fail(reply.message, reason="engine error")
                await flush_quietly(caller, session)
                return "engine error"
            if session.send_audio(encoder.encode(reply.pcm)):
                counters.audio_frames_out += 1
            if reply.text:
                session.send_text(reply.text)
            await flush(caller, session)
    except CallerGone:
        return "caller closed"
    except ConnectionClosed:
        pass
    # A close frame from the replica (1000/1001) is an orderly end; anything else (no
    # close frame: 1006) means the replica or its host went away.
    if data.close_code in (1000, 1001):
        return "replica closed the call"
    return "replica lost"

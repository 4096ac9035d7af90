"""The server-side call: one piece of code for every front door (ADR 0110).

A caller's WebSocket (any shell behind :class:`CallerSocket`: ``websockets`` for ``serve``
and its ingress workers, Starlette under Ray Serve for the cluster) speaks Kyutai's
protocol through the sans-I/O :class:`~voice_server_moshi.moshi.session.ServerSession`;
this module runs the call between it and a :class:`~.kinds.CallLink` (the engine here, or
one across the data plane):

* uplink: every message counted against the call's limits
  (:class:`~voice_server_moshi.server.limits.CallGuard`; audio accounted from its Ogg
  headers before it is decoded), Opus decoded and framed to 80 ms, say / cancel /
  transcript-flush requests passed on; undecodable Opus ends the call with ``0x05`` and
  1007;
* downlink: agent audio (Opus) and text, steering answers and progress (``0x40``),
  caller transcripts (``0x50``-``0x53``), an engine failure as ``0x05`` and 1011;
* the timeouts, and why the call ended (``moshi_server_calls_closed_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..audio.framing import SampleFramer
from ..audio.moshi_frame import FRAME_SAMPLES, SAMPLE_RATE
from ..audio.opus import OpusDecoder, OpusEncoder
from ..engine.slot import SlotError, SlotOutput, SttOutput
from ..moshi import caller_protocol
from ..moshi.session import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_INTERNAL,
    AudioReceived,
    CloseFrame,
    MalformedReceived,
    ServerSession,
)
from ..moshi.session.steering import (
    CancelRequested,
    SayAudioRequested,
    SayTextRequested,
    ServerSteering,
)
from ..server.counters import ServerCounters
from ..server.limits import CallGuard, CallLimits, CloseReason, Reap
from ..server.reaper import first_timeout
from .kinds import (
    CallClosed,
    CallEvent,
    CallLink,
    CallRequest,
    CancelSay,
    FinishCaller,
    SayAudio,
    SayText,
    SteerAnswer,
)

__all__ = ["CallerGone", "CallerSocket", "ServerCall"]


class CallerGone(Exception):
    """The caller's WebSocket closed."""


class CallerSocket(Protocol):
    async def receive(self) -> bytes | str | None:
        """The next message; None when the caller has gone."""

    async def send(self, data: bytes) -> None:
        """Send one binary message; raises CallerGone when closed."""

    async def close(self, code: int, reason: str) -> None: ...

    def closed_reason(self) -> CloseReason | None:
        """None while open; else why it closed when the server did not close it."""


class ServerCall:
    """One admitted call: :meth:`run` it; :meth:`close` ends it from outside."""

    def __init__(self, call_id: str, caller: CallerSocket, session: ServerSession,
                 link: CallLink, *, limits: CallLimits, counters: ServerCounters,
                 clog: Any) -> None:
        self.call_id = call_id
        self.caller = caller
        self.session = session
        self.link = link
        self.limits = limits
        self.counters = counters
        self.clog = clog
        #: Why the server is ending the call (the first reason wins).
        self.ending: CloseReason | None = None
        self._engine_ended = False
        self.guard: CallGuard | None = None

    # -- sending -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send what the session queued, in order; a CloseFrame closes the caller."""
        for item in self.session.data_to_send():
            if isinstance(item, CloseFrame):
                await self.caller.close(item.code, item.reason)
            else:
                await self.caller.send(item)

    async def flush_quietly(self) -> None:
        with contextlib.suppress(CallerGone):
            await self.flush()

    def end(self, reason: CloseReason) -> bool:
        """Record why the server ends the call; False if it was already ending."""
        if self.ending is not None:
            return False
        self.ending = reason
        return True

    async def close(self, code: int, reason: str, why: CloseReason) -> None:
        """End the call from outside (the operator, a shutdown) with a close frame."""
        self.end(why)
        self.session.close(code, reason)
        with contextlib.suppress(Exception):
            await self.flush()

    async def reap(self, reap: Reap) -> None:
        """End the call for ``reap``'s reason: free its slot at once, then ``0x05`` saying
        why and the close frame (bounded: a peer that reads nothing must not hold it)."""
        first = self.caller.closed_reason() is None and self.end(reap.reason)
        await self.link.aclose()
        if not first:
            return  # already ending: keepalive, the client, the operator came first
        self.clog.info("closing the call", reason=reap.reason.value, code=reap.code,
                       message=reap.message)
        self.session.fail(reap.message, code=reap.code, reason=reap.reason.value)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), self.limits.close_timeout_s + 1)

    # -- the call ------------------------------------------------------------------------

    async def run(self) -> CloseReason:
        """Start the session (handshake, metadata) and run the call until it ends;
        returns why it ended. The link is closed on every way out."""
        loop = asyncio.get_running_loop()
        self.guard = guard = CallGuard(self.limits, loop.time(), SAMPLE_RATE)
        tasks: list[asyncio.Task[Any]] = []
        try:
            self.session.start()
            await self.flush()
            self.clog.info("call started")
            up = asyncio.create_task(self._uplink(guard))
            down = asyncio.create_task(self._downlink())
            timer = asyncio.create_task(first_timeout(guard))
            tasks = [up, down, timer]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            verdict: Reap | None = None
            if up in done and up.exception() is None:
                verdict = up.result()
            elif timer in done:
                verdict = timer.result()
            if verdict is not None:
                await self.reap(verdict)
            elif down not in done and self._engine_ended:
                # The engine ended the call under us: give the downlink the moment it
                # needs to send the engine's error and close before it is cancelled.
                await asyncio.wait({down}, timeout=2.0)
        except CallerGone:
            pass
        finally:
            await self.link.aclose()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        reason = self.ending or self.caller.closed_reason() or CloseReason.CLIENT
        self.counters.closed[reason.value] += 1
        return reason

    async def _uplink(self, guard: CallGuard) -> Reap | None:
        """Feed the engine until the caller goes, or return why the call must end."""
        loop = asyncio.get_running_loop()
        decoder = OpusDecoder(SAMPLE_RATE)
        framer = SampleFramer(FRAME_SAMPLES, np.float32)
        session, counters = self.session, self.counters
        while True:
            raw = await self.caller.receive()
            if raw is None:
                return None
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
                    self.clog.info("malformed message skipped", error=str(ev.error))
                elif isinstance(ev, AudioReceived):
                    before = guard.audio_s
                    reap = guard.before_audio(ev.data, now)  # counted before decoding
                    counters.audio_in_s += guard.audio_s - before
                    if reap is not None:
                        return reap
                    try:
                        pcm = decoder.decode(ev.data)
                    except Exception as exc:  # sphn raises its own errors on corrupt streams
                        counters.protocol_errors += 1
                        return Reap(CloseReason.BAD_AUDIO, CLOSE_BAD_PAYLOAD,
                                    f"invalid Ogg/Opus audio (24 kHz mono expected): {exc}")
                    reap = guard.after_audio(len(pcm) / SAMPLE_RATE, loop.time())
                    if reap is not None:
                        return reap
                    for frame in framer.push(pcm):
                        if not await self.link.send_frame(frame):
                            self._engine_ended = True
                            return None  # the engine closed this call; the downlink says why
                else:
                    req = _request_of(ev)
                    if req is not None:  # unknown kinds, control and ping are ignored
                        answer = await self.link.request(req)
                        if answer is not None:
                            self._answer(answer)
            await self.flush()  # replies to malformed messages, steering answers

    def _answer(self, answer: SteerAnswer) -> None:
        steering = ServerSteering.of(self.session)
        if steering is not None:
            steering.update(answer.request_id, answer.status, answer.message)

    async def _downlink(self) -> None:
        """Send the engine's events until the call ends; a failure here ends it (1011)."""
        try:
            await self._send_events()
        except CallerGone:
            return
        except Exception as exc:
            # Never leave a call half alive: no more audio would come, so end it.
            self.clog.exception("sending to the client failed; closing the call")
            self.end(CloseReason.SEND_FAILED)
            self.session.fail(f"server error: {exc}", code=CLOSE_INTERNAL,
                              reason="server error")
            await self.flush_quietly()

    async def _send_events(self) -> None:
        encoder = OpusEncoder(SAMPLE_RATE)
        session, steering = self.session, ServerSteering.of(self.session)
        turn_ended = False  # 0x51 goes out when the end-of-turn head crosses 0.5 upwards
        ev: CallEvent
        async for ev in self.link.events():
            if isinstance(ev, SlotOutput):
                if steering is not None:
                    for mark in ev.steering:
                        steering.update(mark.request_id, mark.status)
                if session.send_audio(encoder.encode(ev.pcm)):
                    self.counters.audio_frames_out += 1
                if ev.text:
                    session.send_text(ev.text)
            elif isinstance(ev, SttOutput):
                turn_ended = _send_transcript(session, ev, turn_ended)
            elif isinstance(ev, SteerAnswer):
                self._answer(ev)
            elif isinstance(ev, SlotError | CallClosed):
                self._engine_ended = True
                if isinstance(ev, SlotError):
                    self.clog.warning("engine failed the call", error=ev.message)
                    self.end(CloseReason.ENGINE)
                    session.fail(ev.message, code=CLOSE_INTERNAL, reason="engine error")
                else:
                    self.end(CloseReason.SHUTDOWN)
                    session.close(ev.code, ev.reason)
                await self.flush_quietly()
                return
            await self.flush()


def _request_of(ev: object) -> CallRequest | None:
    if isinstance(ev, SayTextRequested):
        return SayText(ev.request_id, ev.text)
    if isinstance(ev, SayAudioRequested):
        return SayAudio(ev.request_id, ev.text, ev.pcm)
    if isinstance(ev, CancelRequested):
        return CancelSay(ev.flush)
    if isinstance(ev, caller_protocol.FlushCaller):
        return FinishCaller()  # the client's audio has ended: last words, then 0x53
    return None


def _send_transcript(session: ServerSession, ev: SttOutput, turn_ended: bool) -> bool:
    """Queue a caller-transcript step (0x50, 0x51, 0x53); returns the new turn state."""
    if ev.text:
        session.send_raw(caller_protocol.CALLER_TEXT,
                         caller_protocol.encode_text(ev.text, ev.stream_ms)[1:])
    if ev.end_of_turn is not None:
        if ev.end_of_turn > 0.5 and not turn_ended:
            session.send_raw(caller_protocol.CALLER_END_OF_TURN,
                             caller_protocol.encode_end_of_turn(ev.end_of_turn,
                                                                ev.stream_ms)[1:])
        turn_ended = ev.end_of_turn > 0.5
    if ev.final:
        session.send_raw(caller_protocol.CALLER_FLUSHED, b"")
    return turn_ended


#: A front door's hook around each admitted call (bookkeeping, e.g. ``close_call``).
CallHook = Callable[[ServerCall], None]

"""The server's outbound side: a connection that sends what its session queued, and the
loop that turns a call's engine outputs (agent audio, text, steering marks, caller
transcripts) into Kyutai-protocol messages."""

from __future__ import annotations

import contextlib

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..audio.opus import OpusEncoder
from ..engine.session import EngineCall
from ..engine.slot import SlotError, SlotOutput, SttOutput
from ..moshi import caller_protocol
from ..moshi.session import CLOSE_INTERNAL, CloseFrame, ServerSession
from . import steering
from .limits import CloseReason
from .logsafe import SafeLogger
from .metrics import ServerCounters

__all__ = ["SAMPLE_RATE", "Connection", "send_loop"]

SAMPLE_RATE = 24000


class Connection:
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


async def send_loop(conn: Connection, call: EngineCall, call_id: str, clog: SafeLogger,
                    ending: dict[str, CloseReason], counters: ServerCounters) -> None:
    """Send a call's outputs until it ends; a failure here ends the call (1011)."""
    try:
        await _send_outputs(conn, call, call_id, clog, ending, counters)
    except Exception as exc:
        # Never leave a call half alive: no more audio would come, so end it.
        clog.exception("sending to the client failed; closing the call")
        ending.setdefault(call_id, CloseReason.SEND_FAILED)
        conn.session.fail(f"server error: {exc}", code=CLOSE_INTERNAL, reason="server error")
        with contextlib.suppress(Exception):
            await conn.flush()

async def _send_outputs(conn: Connection, call: EngineCall, call_id: str, clog: SafeLogger,
                        ending: dict[str, CloseReason], counters: ServerCounters) -> None:
    encoder = OpusEncoder(SAMPLE_RATE)
    session = conn.session
    turn_ended = False  # 0x51 goes out when the end-of-turn head crosses 0.5 upwards
    async for ev in call.events():
        if isinstance(ev, SttOutput):
            if ev.text:
                session.send_raw(caller_protocol.CALLER_TEXT,
                                 caller_protocol.encode_text(ev.text, ev.stream_ms)[1:])
            if ev.end_of_turn is not None:
                if ev.end_of_turn > 0.5 and not turn_ended:
                    session.send_raw(caller_protocol.CALLER_END_OF_TURN,
                                     caller_protocol.encode_end_of_turn(
                                         ev.end_of_turn, ev.stream_ms)[1:])
                turn_ended = ev.end_of_turn > 0.5
            if ev.final:
                session.send_raw(caller_protocol.CALLER_FLUSHED, b"")
            with contextlib.suppress(ConnectionClosed):
                await conn.flush()
            continue
        if isinstance(ev, SlotError):
            clog.warning("engine failed the call", error=ev.message)
            ending.setdefault(call_id, CloseReason.ENGINE)
            session.fail(ev.message, code=CLOSE_INTERNAL, reason="engine error")
            await conn.flush_quietly()
            return
        assert isinstance(ev, SlotOutput)
        steering.report(session, ev)
        if session.send_audio(encoder.encode(ev.pcm)):
            counters.audio_frames_out += 1
        if ev.text:
            session.send_text(ev.text)
        try:
            await conn.flush()
        except ConnectionClosed:
            return

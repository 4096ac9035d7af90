"""What a call's client sends, checked against its limits and fed to the engine.

Each message is counted against the call's message budget; malformed ones are answered by
the session (up to ``max_malformed``) and counted; audio is accounted from its Ogg/Opus
headers *before* it is decoded (:class:`~.limits.CallGuard`), so an Opus bomb or a client
far ahead of real time is refused without costing a decode, and the decoder's own count
is checked afterwards. The loop returns the :class:`~.limits.Reap` that ends the call, or
None when the client closed (or the engine ended the call).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
from websockets.asyncio.server import ServerConnection

from ..audio.framing import SampleFramer
from ..audio.opus import OpusDecoder
from ..engine.config import FRAME_SAMPLES
from ..engine.session import EngineCall
from ..moshi.session import (
    CLOSE_BAD_PAYLOAD,
    AudioReceived,
    MalformedReceived,
    ServerSession,
    SessionEvent,
)
from .limits import CallGuard, CloseReason, Reap
from .logsafe import SafeLogger
from .metrics import ServerCounters

__all__ = ["SAMPLE_RATE", "receive_loop"]

SAMPLE_RATE = 24000


async def receive_loop(ws: ServerConnection, session: ServerSession, call: EngineCall,
                       guard: CallGuard, counters: ServerCounters, clog: SafeLogger, *,
                       flush: Callable[[], Awaitable[None]],
                       on_event: Callable[[SessionEvent], Awaitable[None]] | None = None,
                       ) -> Reap | None:
    """Feed the engine until the client goes, or return why the call must end."""
    loop = asyncio.get_running_loop()
    decoder = OpusDecoder(SAMPLE_RATE)
    framer = SampleFramer(FRAME_SAMPLES, np.float32)
    async for raw in ws:
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
                    try:
                        call.send(frame)
                    except RuntimeError:
                        return None  # the engine closed this call; the sender says why
            elif on_event is not None:
                # Extensions' requests (steering, caller-transcript flush); unknown kinds,
                # control and ping reach it too and are ignored there.
                await on_event(ev)
        await flush()  # replies to malformed messages
    return None

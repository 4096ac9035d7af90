"""``serve``'s steering: client say/cancel requests to the call's engine slot (ADR 0070).

The protocol side is :mod:`voice_server_moshi.moshi.session.steering`; this module acts on
its events with the call's :class:`~voice_server_moshi.engine.session.EngineCall` and
reports progress back as ``0x40`` updates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.session import EngineCall
from ..engine.slot import SlotOutput
from ..errors import SteeringRequestError
from ..moshi.session import ServerSession, SessionEvent
from ..moshi.session.steering import (
    CancelRequested,
    SayAudioRequested,
    SayTextRequested,
    ServerSteering,
)

STEERING_EVENTS = (SayTextRequested, SayAudioRequested, CancelRequested)


def install(session: ServerSession) -> ServerSession:
    """Give a server session the steering extension (and ``"steering": true``)."""
    ServerSteering(session)
    return session


async def handle(session: ServerSession, call: EngineCall, ev: SessionEvent, clog: Any) -> None:
    """Act on one steering request event; its answer is queued on the session."""
    steering = ServerSteering.of(session)
    if steering is None:
        return
    if isinstance(ev, CancelRequested):
        for rid in call.cancel_say(ev.flush):
            clog.info("steering cancelled", request_id=rid)
        return
    if not isinstance(ev, SayTextRequested | SayAudioRequested):
        return
    try:
        if isinstance(ev, SayTextRequested):
            call.say_text(ev.text, ev.request_id)
        else:
            pcm = np.frombuffer(ev.pcm, dtype="<i2").astype(np.float32) / 32768.0
            await call.say_audio(pcm, ev.text, ev.request_id)
    except SteeringRequestError as exc:
        clog.info("steering request refused", request_id=ev.request_id, error=str(exc))
        steering.update(ev.request_id, "failed", str(exc))
        return
    clog.info("steering request queued", request_id=ev.request_id,
              kind="text" if isinstance(ev, SayTextRequested) else "audio")
    steering.update(ev.request_id, "queued")


def report(session: ServerSession, out: SlotOutput) -> None:
    """Queue the ``0x40`` updates an output frame carries (before its audio and text)."""
    if not out.steering:
        return
    steering = ServerSteering.of(session)
    if steering is None:
        return
    for mark in out.steering:
        steering.update(mark.request_id, mark.status)

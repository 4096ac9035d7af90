"""A Twilio Media Streams client, written from Twilio's published WebSocket message
reference, that plays a phone call into a server the way Twilio does.

Twilio -> server: ``connected`` (``protocol: Call``, ``version: 1.0.0``), ``start``
(``streamSid``, ``start.callSid``, ``start.tracks``, ``start.mediaFormat`` = ``audio/x-mulaw``,
8000 Hz, 1 channel), ``media`` every 20 ms (``media.track`` ``inbound``, ``chunk`` and
``timestamp`` as strings, ``payload`` base64 µ-law), ``mark`` (the name of a mark the server
sent, once the audio queued before it has played; here: at once), ``stop``. Every message
but ``connected`` carries ``sequenceNumber`` (a string counting from 1) and ``streamSid``.
Server -> Twilio: ``media`` (``streamSid``, ``media.payload``), ``mark``, ``clear``.

Used by the tests and by ``bench pipecat`` against ``voice-server-moshi pipecat-twilio``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

__all__ = ["TwilioCallResult", "play_twilio_call", "stream_signature"]

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of 8 kHz µ-law


@dataclass(slots=True)
class TwilioCallResult:
    stream_sid: str
    sent_frames: int
    #: (wall, call ms since the first media sent, payload bytes) of each agent ``media``.
    media: list[tuple[float, float, int]] = field(default_factory=list)
    #: Call ms at which each ``clear`` arrived.
    clears: list[float] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    other_stream_sids: int = 0
    unknown: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    closed_after_stop_s: float | None = None
    #: Wall time at which each caller media message was sent.
    sent_wall: list[float] = field(default_factory=list)
    agent_audio: bytes = b""

    @property
    def call_ms(self) -> float:
        return self.sent_frames * FRAME_MS

    @property
    def media_ms(self) -> float:
        return sum(n for _, _, n in self.media) / 8.0


def stream_signature(auth_token: str, url: str) -> str:
    """``X-Twilio-Signature`` of a Media Streams upgrade, computed by Twilio's own
    ``RequestValidator``: the ``<Stream url>`` (``wss://``; a loopback ``ws://`` test URL is
    signed as the ``wss://`` one the TwiML named), no parameters."""
    from twilio.request_validator import RequestValidator

    signed = "wss://" + url.split("://", 1)[1] if url.startswith("ws://") else url
    return str(RequestValidator(auth_token).compute_signature(signed, {}))


async def play_twilio_call(
    url: str,
    mulaw: bytes,
    *,
    stream_sid: str | None = None,
    call_sid: str | None = None,
    speed: float = 1.0,
    close_timeout_s: float = 10.0,
    before_media: Callable[[], Awaitable[None]] | None = None,
    auth_token: str | None = None,
) -> TwilioCallResult:
    """Stream ``mulaw`` (8 kHz µ-law) to ``url`` like Twilio, then ``stop``; wait for the
    server to close (``close_timeout_s``). ``before_media`` is awaited between ``start``
    and the first ``media`` (the benchmark waits for the server's model there).
    ``auth_token``: sign the upgrade as Twilio does (:func:`stream_signature`)."""
    sid = stream_sid or "MZ" + uuid.uuid4().hex
    csid = call_sid or "CA" + uuid.uuid4().hex
    res = TwilioCallResult(sid, 0)
    seq = 0

    def msg(event: str, **body: Any) -> str:
        nonlocal seq
        seq += 1
        return json.dumps({"event": event, "sequenceNumber": str(seq), "streamSid": sid, **body})

    t0 = 0.0
    agent = bytearray()
    headers = ({"X-Twilio-Signature": stream_signature(auth_token, url)}
               if auth_token is not None else None)
    async with websockets.connect(url, max_size=2**20, additional_headers=headers,
                                  proxy=None) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(msg("start", start={
            "accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": csid,
            "tracks": ["inbound"], "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }))
        stopped = asyncio.Event()

        async def receive() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):  # any code: res has it
                async for raw in ws:
                    await on_message(raw)

        async def on_message(raw: str | bytes) -> None:
            m = json.loads(raw)
            ev = m.get("event")
            if m.get("streamSid") != sid:
                res.other_stream_sids += 1
            now = time.perf_counter()
            pos = 1000.0 * (now - t0) * speed if t0 else 0.0
            if ev == "media":
                payload = base64.b64decode(m["media"]["payload"])
                agent.extend(payload)
                res.media.append((now, pos, len(payload)))
            elif ev == "clear":
                res.clears.append(pos)
            elif ev == "mark":
                name = str(m.get("mark", {}).get("name", ""))
                res.marks.append(name)
                if not stopped.is_set():  # Twilio echoes a mark once it has played
                    await ws.send(msg("mark", mark={"name": name}))
            else:
                res.unknown.append(str(ev))

        rx = asyncio.create_task(receive())
        if before_media is not None:
            await before_media()
        period = FRAME_MS / 1000.0 / speed
        t0 = time.perf_counter()
        with contextlib.suppress(websockets.ConnectionClosed):  # the server ended it early
            await _send_media(ws, mulaw, msg, res, t0, period, rx)
        stopped.set()
        t_stop = time.perf_counter()
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(msg("stop", stop={"accountSid": "AC" + "0" * 32, "callSid": csid}))
        try:
            await asyncio.wait_for(asyncio.shield(rx), close_timeout_s)
            res.closed_after_stop_s = time.perf_counter() - t_stop
        except TimeoutError:
            rx.cancel()
        res.close_code = ws.close_code
        res.close_reason = ws.close_reason or ""
    res.agent_audio = bytes(agent)
    return res


async def _send_media(ws: websockets.ClientConnection, mulaw: bytes,
                      msg: Callable[..., str], res: TwilioCallResult, t0: float,
                      period: float, rx: asyncio.Task[None]) -> None:
    for k in range(len(mulaw) // FRAME_BYTES):
        delay = t0 + k * period - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = mulaw[k * FRAME_BYTES : (k + 1) * FRAME_BYTES]
        res.sent_wall.append(time.perf_counter())
        await ws.send(msg("media", media={
            "track": "inbound", "chunk": str(k + 1), "timestamp": str(k * FRAME_MS),
            "payload": base64.b64encode(chunk).decode("ascii"),
        }))
        res.sent_frames += 1
        if rx.done():
            break

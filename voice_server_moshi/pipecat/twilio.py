"""A phone number's audio through Pipecat to Moshi: Twilio Media Streams behind FastAPI.

``create_app`` serves three routes:

* ``/`` (GET or POST: Twilio's voice webhook): the TwiML answer
  ``<Connect><Stream url="wss://HOST/ws"/></Connect>``, so a number's calls stream here,
  or ``<Reject reason="busy"/>`` when every slot is taken;
* ``/ws``: Twilio's Media Streams WebSocket. The ``connected`` and ``start`` messages are
  read here (``streamSid``, ``callSid``, ``mediaFormat``); the rest of the call runs in a
  Pipecat pipeline ``transport.input() -> MoshiService -> transport.output()`` on Pipecat's
  ``FastAPIWebsocketTransport`` with its ``TwilioFrameSerializer`` (µ-law 8 kHz both ways,
  ``clear`` on an ``InterruptionFrame``). ``stop`` ends the pipeline cleanly (the adapter
  disconnects, the socket closes with 1000).
* ``/metrics``: calls started, in progress, refused busy, refused for their signature.

Both doors check Twilio's ``X-Twilio-Signature`` with the account's auth token and answer
403 before anything is made (:mod:`.twilio_doors`); only ``insecure_no_signature`` (local
tests) turns that off. The token (``TWILIO_AUTH_TOKEN`` or a file) is never logged; with
``TWILIO_ACCOUNT_SID`` it also lets the serializer hang the call up. Without the SID
hang-up is off and the call ends when Twilio ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import quoteattr

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from pipecat.frames.frames import EndWorkerFrame, Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

from .._log import get_logger
from ..adapter import VoiceModelAdapter, VoiceModelConfig
from ..errors import ServerBusyError, SettingsError
from ..modes.clock import Clock
from ..registry import Registry, load_registry
from .service import MoshiService
from .twilio_doors import (
    BUSY_CLOSE_CODE,
    SIGNATURE_HEADER,
    CallGate,
    PublicUrls,
    TwilioCounters,
    TwilioSignature,
    reject_busy_twiml,
)

__all__ = ["TWILIO_RATE", "ModeClockedTransport", "StreamSerializer", "create_app", "twiml"]

TWILIO_RATE = 8000
log = get_logger("voice_server_moshi.pipecat.twilio")


def twiml(ws_url: str) -> str:
    """TwiML that connects the call's audio to ``ws_url`` (a ``wss://.../ws`` URL)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Connect>'
            f"<Stream url={quoteattr(ws_url)} /></Connect></Response>")


class StreamSerializer(TwilioFrameSerializer):
    """Pipecat's Twilio serializer, plus: Twilio's ``stop`` ends the pipeline cleanly.

    Pipecat's serializer ignores ``stop``; the call would then end only when the socket
    drops. Here ``stop`` becomes an ``EndWorkerFrame``: queued audio is flushed, the
    adapter disconnects and the server closes the socket normally.
    """

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, str) and '"stop"' in data:
            with contextlib.suppress(ValueError):
                if json.loads(data).get("event") == "stop":
                    return EndWorkerFrame(reason="twilio stop")
        frame: Frame | None = await super().deserialize(data)
        return frame


class _ModeClockedOutput(FastAPIWebsocketOutputTransport):
    async def _write_audio_sleep(self) -> None:
        return  # the mode's clock already paces agent audio: one frame per tick


class ModeClockedTransport(FastAPIWebsocketTransport):
    """Pipecat's FastAPI WebSocket transport with one clock: the mode's.

    Pipecat's output sleeps one chunk period after each write to imitate playback, and
    restarts that clock from "now" whenever it wakes late, so on a loaded machine it falls
    behind for good (agent audio reached the caller 10-30 % slower than real time on this
    project's loaded 2-core VM). The full-duplex mode already emits exactly one frame per
    tick on an absolute clock, so here each frame is written as the mode plays it (ADR
    0090). Only the private ``_write_audio_sleep`` of the output is replaced.
    """

    def __init__(self, websocket: WebSocket, params: FastAPIWebsocketParams) -> None:
        super().__init__(websocket, params)
        self._output = _ModeClockedOutput(self, self._client, self._params,
                                          name=self._output_name)


#: A webhook's form body larger than this is refused (Twilio's are a few hundred bytes).
MAX_WEBHOOK_BYTES = 64 * 1024


def _credentials(env: Mapping[str, str], token: str | None) -> dict[str, Any]:
    sid = env.get("TWILIO_ACCOUNT_SID")
    if sid and token:
        return {"account_sid": sid, "auth_token": token}
    return {}


async def _read_start(ws: WebSocket, timeout_s: float) -> dict[str, Any]:
    """Twilio sends ``connected`` then ``start``; return the ``start`` message."""
    async with asyncio.timeout(timeout_s):
        while True:
            msg = json.loads(await ws.receive_text())
            if msg.get("event") == "start":
                start: dict[str, Any] = msg
                return start
            if msg.get("event") not in ("connected",):
                raise ValueError(f"expected 'connected' or 'start', got {msg.get('event')!r}")


def create_app(
    moshi: Mapping[str, Any] | None = None,
    full_duplex: Mapping[str, Any] | None = None,
    *,
    public_url: str | None = None,
    registry: Registry | None = None,
    adapter_factory: Callable[[], VoiceModelAdapter] | None = None,
    env: Mapping[str, str] | None = None,
    prewarm: bool = True,
    on_service: Callable[[MoshiService], None] | None = None,
    clock_factory: Callable[[], Clock] | None = None,
    pipecat_pacing: bool = False,
    auth_token: str | None = None,
    insecure_no_signature: bool = False,
    slots: int | None = None,
) -> FastAPI:
    """The Twilio app. ``moshi``/``full_duplex``: the host config's sections.

    ``auth_token``: the Twilio account's auth token (default ``TWILIO_AUTH_TOKEN`` from
    ``env``): every webhook and stream must carry its ``X-Twilio-Signature``; without one
    the app is refused (SettingsError) unless ``insecure_no_signature`` (local tests).
    ``slots``: calls taken at once (None: no cap; the engine refuses past its slots).
    ``public_url``: the public URL behind a proxy (:class:`PublicUrls`: the ``https://``
    base, or the ``wss://.../ws`` stream URL; default: from the request's Host header),
    the URL Twilio signs. ``prewarm`` connects one adapter at start-up so the
    embedded engine is loaded before the first call. ``on_service`` sees each call's
    service (tests and the benchmark read its decisions); ``clock_factory`` gives each
    call's mode clock (default real time; ``ManualClock`` clocks the mode by the caller's
    media, see :class:`MoshiService`); ``pipecat_pacing`` keeps Pipecat's own output
    pacing instead of :class:`ModeClockedTransport` (for the benchmark's comparison).
    """
    reg = registry or load_registry()
    moshi_settings = dict(moshi or {})
    environ = os.environ if env is None else env
    token = auth_token or environ.get("TWILIO_AUTH_TOKEN") or None
    public = PublicUrls.parse(public_url)
    counters = TwilioCounters()
    gate = CallGate(slots, counters)
    if token is not None:
        signer: TwilioSignature | None = TwilioSignature(token, public)
    elif insecure_no_signature:
        signer = None
        log.warning("twilio_signature_check_off", detail="anyone who can reach this server "
                    "can open calls: --insecure-no-signature is for local tests only")
    else:
        raise SettingsError("pipecat-twilio", [
            "X-Twilio-Signature is checked with the Twilio account's auth token: set "
            "TWILIO_AUTH_TOKEN or --twilio-auth-token-file (--insecure-no-signature for "
            "local tests only)"])
    if adapter_factory is None:
        reg.create_adapter("moshi", moshi_settings)  # bad settings fail here, not per call

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if prewarm and adapter_factory is None:
            adapter = reg.create_adapter("moshi", moshi_settings)
            await adapter.connect(VoiceModelConfig(call_id="prewarm"))
            await adapter.disconnect()
            log.info("pipecat_twilio_prewarmed")
        yield

    app = FastAPI(lifespan=lifespan)

    async def answer(request: Request) -> Response:
        body = await request.body() if request.method == "POST" else b""
        if len(body) > MAX_WEBHOOK_BYTES:
            return Response("webhook body too large\n", status_code=413)
        params = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        if signer is not None and not signer.webhook_ok(
                str(request.url), params, request.headers.get(SIGNATURE_HEADER)):
            counters.bad_signature += 1
            log.warning("twilio_bad_signature", door="webhook",
                        remote=request.client.host if request.client else None)
            return Response("missing or wrong X-Twilio-Signature\n", status_code=403)
        call_sid = next(iter(params.get("CallSid", [])), None)
        if not gate.free():
            counters.busy_webhook += 1
            log.warning("twilio_call_rejected_busy", door="webhook", call_sid=call_sid,
                        slots=gate.slots, active=counters.calls_active)
            return Response(content=reject_busy_twiml(), media_type="application/xml")
        url = public.stream_url(request.headers.get("host", "localhost"))
        return Response(content=twiml(url), media_type="application/xml")

    app.add_api_route("/", answer, methods=["GET", "POST"])

    async def metrics() -> Response:
        return Response(counters.render(gate.slots), media_type="text/plain; version=0.0.4")

    app.add_api_route("/metrics", metrics, methods=["GET"])

    @app.websocket("/ws")
    async def media_stream(ws: WebSocket) -> None:
        if signer is not None and not signer.stream_ok(
                ws.headers.get("host", "localhost"), ws.headers.get(SIGNATURE_HEADER)):
            counters.bad_signature += 1
            log.warning("twilio_bad_signature", door="stream",
                        remote=ws.client.host if ws.client else None)
            await ws.close(code=1008)  # before accept: the server answers HTTP 403
            return
        await ws.accept()
        try:
            start = await _read_start(ws, 10.0)
            info = start["start"]
            stream_sid = str(start.get("streamSid") or info["streamSid"])
            fmt = info.get("mediaFormat", {})
            if (fmt.get("encoding", "audio/x-mulaw") != "audio/x-mulaw"
                    or int(fmt.get("sampleRate", TWILIO_RATE)) != TWILIO_RATE):
                raise ValueError(f"unsupported mediaFormat {fmt}; Twilio streams "
                                 "audio/x-mulaw at 8000 Hz")
        except (ValueError, KeyError, TypeError, TimeoutError) as exc:
            log.warning("twilio_bad_start", error=str(exc))
            await ws.close(code=1008, reason="expected Twilio connected/start messages")
            return
        call_sid = info.get("callSid")
        if not gate.take():
            counters.busy_stream += 1
            log.warning("twilio_call_rejected_busy", door="stream", stream_sid=stream_sid,
                        call_sid=call_sid, slots=gate.slots)
            await ws.close(code=BUSY_CLOSE_CODE,
                           reason=f"busy: all {gate.slots} call slots are taken")
            return
        try:
            await _run_call(ws, stream_sid, call_sid)
        finally:
            gate.give_back()

    async def _run_call(ws: WebSocket, stream_sid: str, call_sid: str | None) -> None:
        creds = _credentials(environ, token)
        serializer = StreamSerializer(
            stream_sid, call_sid=call_sid,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=bool(creds and call_sid)),
            **(creds if call_sid else {}),
        )
        params = FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False,
            serializer=serializer, audio_out_10ms_chunks=2, audio_out_end_silence_secs=0,
            ws_close_timeout=2.0,
        )
        transport = (FastAPIWebsocketTransport(ws, params) if pipecat_pacing
                     else ModeClockedTransport(ws, params))
        service = MoshiService(moshi=moshi_settings, full_duplex=full_duplex, registry=reg,
                               adapter_factory=adapter_factory, call_id=stream_sid,
                               clock=clock_factory() if clock_factory is not None else None)
        if on_service is not None:
            on_service(service)

        async def refused(exc: Exception) -> None:
            if isinstance(exc, ServerBusyError):  # the engine itself is full (a remote one)
                counters.busy_stream += 1
                log.warning("twilio_call_rejected_busy", door="engine", stream_sid=stream_sid,
                            call_sid=call_sid, error=str(exc))
                with contextlib.suppress(Exception):
                    await ws.close(code=BUSY_CLOSE_CODE, reason="busy: the engine is full")

        service.on_connect_failed = refused
        worker = PipelineWorker(
            Pipeline([transport.input(), service, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=TWILIO_RATE,
                                  audio_out_sample_rate=TWILIO_RATE),
            idle_timeout_secs=None, enable_rtvi=False,
        )

        @transport.event_handler("on_client_disconnected")  # type: ignore[untyped-decorator]
        async def _gone(_t: Any, _ws: Any) -> None:
            await worker.cancel(reason="twilio socket closed")

        log.info("twilio_call_started", stream_sid=stream_sid, call_sid=call_sid,
                 hang_up=bool(creds and call_sid))
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()
        log.info("twilio_call_ended", stream_sid=stream_sid)

    return app

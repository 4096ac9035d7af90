"""The Moshi voice-model adapter: telephony audio <-> Moshi frames, on any transport.

Caller path: the call's format (PCM16 or G.711) -> int16 -> float -> streaming resample to
24 kHz -> 80 ms frames -> ``transport.send_frame`` (by one sender task, in order).
Agent path: 24 kHz PCM -> streaming resample to the call's rate -> whole frames of the
call's frame size -> the call's encoding -> one ``audio-chunk`` per frame.

Moshi is clocked by its input (one 80 ms frame out per frame in), so a pacing task on the
call's clock sends silence when the caller's media stalls for more than ``stall_fill_ms``
(at least twice the call's frame and twice the largest chunk the host has sent); caller
audio that then arrives for time already filled is dropped as late, which keeps the added
delay bounded (ADR 0022). Counters: ``caller_ms``,
``silence_frames`` and ``late_frames`` (in call frames), ``frames_sent`` and
``frames_received`` (Moshi frames), ``chunks_out``, ``text_pieces``, ``peer_errors``,
``frames_dropped`` (outbound queue overflow while the network stalls).

Text pieces become agent ``transcript`` events (words; ADR 0021). Caller speech
start/end come from the caller VAD chosen by ``vad`` in the settings (registered through
the ``voice_server_register_vads`` hook; ``"energy"`` by default) on the caller's own
audio, in caller stream time.
"""

from __future__ import annotations

import asyncio
import importlib
from collections import deque
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from ..adapter import BaseAdapter, VoiceModelConfig
from ..audio import g711
from ..audio.framing import SampleFramer
from ..audio.resample import Resampler
from ..capabilities import Capabilities
from ..errors import ConnectError
from ..events import AudioChunk, Error, SpeechEnded, SpeechStarted, Transcript
from ..vads import AgentAudioSink, Vad, VadConfig, VadFactory, resolve_vad
from .settings import MoshiSettings
from .transcript import AgentWords
from .transport import (
    MOSHI_FRAME_SAMPLES,
    MOSHI_SAMPLE_RATE,
    PCM,
    AgentAudio,
    AgentText,
    MoshiTransport,
    PeerClosed,
    PeerError,
)

__all__ = ["MAX_OUTBOUND_FRAMES", "MoshiAdapter"]

#: Caller frames queued for the transport while it is slow (2 s); beyond, the oldest go.
MAX_OUTBOUND_FRAMES = 25
#: WebSocket close code of a normal end of session.
NORMAL_CLOSE = 1000


def _to_int16(x: NDArray[Any]) -> NDArray[np.int16]:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


class MoshiAdapter(BaseAdapter):
    """Kyutai Moshi, full duplex, over a remote server, the embedded engine or an injected
    transport (``transport=``, the way httpx takes a mock transport)."""

    adapter_name: ClassVar[str] = "moshi"
    default_capabilities: ClassVar[Capabilities] = Capabilities(
        full_duplex=True,
        server_vad=False,
        interruption=False,
        caller_transcript=False,
        agent_transcript=True,
    )

    def __init__(
        self,
        settings: MoshiSettings | None = None,
        *,
        transport: MoshiTransport | None = None,
        vad: VadFactory | None = None,
    ) -> None:
        self.settings = settings or MoshiSettings()
        super().__init__(max_queued_events=self.settings.max_queued_events)
        self._injected = transport
        # Resolved now, so a VAD name nobody registered fails when the adapter is made.
        self._vad_factory = vad if vad is not None else resolve_vad(self.settings.vad)
        self.transport: MoshiTransport | None = None
        self._outbound: deque[PCM] = deque()
        self._outbound_ready = asyncio.Event()
        self._t0 = 0.0
        self._fed_ms = 0.0  # call audio pushed towards Moshi: caller audio plus fill
        self._fill_debt_ms = 0.0  # fill not yet matched by late caller audio
        self._caller_ms = 0.0  # the caller's own stream time (VAD clock)
        self._agent_samples = 0  # 24 kHz samples received (transcript clock)
        self._stall_ms = float(self.settings.stall_fill_ms)

    # -- BaseAdapter ---------------------------------------------------------------------

    async def _open(self, config: VoiceModelConfig) -> str:
        fmt = config.audio
        self._in_resampler = Resampler(fmt.sample_rate, MOSHI_SAMPLE_RATE)
        self._in_framer = SampleFramer(MOSHI_FRAME_SAMPLES, np.float32)
        self._out_resampler = Resampler(MOSHI_SAMPLE_RATE, fmt.sample_rate)
        self._out_framer = SampleFramer(fmt.samples_per_frame, np.int16)
        self._vad: Vad = self._vad_factory(VadConfig(
            fmt.sample_rate, self.settings.vad_threshold_db, self.settings.vad_hangover_ms,
            config.call_id,
        ))
        self._vad_sink = self._vad if isinstance(self._vad, AgentAudioSink) else None
        self._words = AgentWords()
        self.transport = self._injected or self._make_transport()
        session_id = await self.transport.open(config.call_id)
        # Never fill a gap a host's own chunking explains (see ADR 0022).
        self._stall_ms = float(max(self.settings.stall_fill_ms, 2 * fmt.frame_ms))
        self._t0 = asyncio.get_running_loop().time()
        self._spawn(self._receive_loop(self.transport), "receive")
        self._spawn(self._sender_loop(self.transport), "sender")
        self._spawn(self._pacing_loop(), "pacing")
        return session_id

    async def _send_audio(self, chunk: bytes) -> None:
        fmt = self.config.audio
        pcm = g711.decode(chunk, fmt.encoding)
        chunk_ms = 1000.0 * len(pcm) / fmt.sample_rate
        self._caller_ms += chunk_ms
        self.counters["caller_ms"] = round(self._caller_ms)
        self._stall_ms = max(self._stall_ms, 2 * chunk_ms)
        for tr in self._vad.process(pcm):
            event = SpeechStarted if tr.kind == "start" else SpeechEnded
            self._emit(event(t_ms=tr.t_ms, source="local-vad"))
        if self._fill_debt_ms > 0 and self._fed_ms + chunk_ms > self._wall_ms() + self._stall_ms:
            # Its time was already filled with silence and Moshi has moved on: late.
            self._fill_debt_ms = max(0.0, self._fill_debt_ms - chunk_ms)
            self.counters["late_frames"] += max(1, round(chunk_ms / fmt.frame_ms))
            return
        self._feed(pcm.astype(np.float32) / 32768.0)

    async def _close(self) -> None:
        if self.transport is not None:
            await self.transport.close()

    async def disconnect(self) -> None:
        if self.state == "connected":
            self._emit_all(self._words.flush())
        await super().disconnect()

    # -- transports ----------------------------------------------------------------------

    def _make_transport(self) -> MoshiTransport:
        if self.settings.resolved_transport == "remote":
            from .remote import RemoteTransport

            return RemoteTransport(self.settings)
        try:
            module = importlib.import_module("voice_server_moshi.moshi.embedded")
        except ImportError as exc:
            raise ConnectError(
                "the embedded Moshi transport needs the 'embedded' extra: pip install "
                f"'voice-server-moshi[embedded]' (or set moshi.url for a remote server); {exc}"
            ) from None
        transport: MoshiTransport = module.EmbeddedTransport(self.settings)
        return transport

    # -- caller side ---------------------------------------------------------------------

    def _wall_ms(self) -> float:
        return 1000.0 * (asyncio.get_running_loop().time() - self._t0)

    def _feed(self, pcm: NDArray[np.float32]) -> None:
        """Push call-rate float audio towards Moshi (caller audio or fill)."""
        self._fed_ms += 1000.0 * len(pcm) / self.config.audio.sample_rate
        up = self._in_resampler.process(pcm)
        for frame in self._in_framer.push(np.asarray(up, dtype=np.float32)):
            if len(self._outbound) >= MAX_OUTBOUND_FRAMES:
                self._outbound.popleft()
                self.counters["frames_dropped"] += 1
            self._outbound.append(frame)
            self._outbound_ready.set()

    async def _sender_loop(self, transport: MoshiTransport) -> None:
        # One task sends, so frames reach the transport in order whoever produced them.
        while True:
            while not self._outbound:
                self._outbound_ready.clear()
                await self._outbound_ready.wait()
            frame = self._outbound.popleft()
            await transport.send_frame(frame)
            self.counters["frames_sent"] += 1

    async def _pacing_loop(self) -> None:
        fmt = self.config.audio
        tick = fmt.frame_ms / 1000.0
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            now = loop.time()
            if now - next_tick > 1.0:
                next_tick = now  # the loop was starved; do not spin to catch up
            lag_ms = self._wall_ms() - self._fed_ms
            if lag_ms <= self._stall_ms:
                continue
            n = int(lag_ms // fmt.frame_ms)
            if n <= 0:
                continue
            self.counters["silence_frames"] += n
            self._fill_debt_ms += n * fmt.frame_ms
            self._feed(np.zeros(n * fmt.samples_per_frame, dtype=np.float32))

    # -- agent side ----------------------------------------------------------------------

    def _agent_ms(self) -> float:
        return 1000.0 * self._agent_samples / MOSHI_SAMPLE_RATE

    def _emit_all(self, transcripts: list[Transcript]) -> None:
        for t in transcripts:
            self._emit(t)

    def _on_agent_audio(self, pcm: PCM) -> None:
        fmt = self.config.audio
        self.counters["frames_received"] += 1
        self._agent_samples += len(pcm)
        down = self._out_resampler.process(np.asarray(pcm, dtype=np.float32))
        for frame in self._out_framer.push(_to_int16(down)):
            if self._vad_sink is not None:
                t_ms = 1000.0 * self.counters["chunks_out"] * fmt.frame_ms
                self._vad_sink.agent_audio(frame, t_ms)
            self._emit(AudioChunk(audio=g711.encode(frame, fmt.encoding), format=fmt))
            self.counters["chunks_out"] += 1
        self._emit_all(self._words.advance(self._agent_ms()))

    async def _receive_loop(self, transport: MoshiTransport) -> None:
        async for event in transport.receive():
            if isinstance(event, AgentAudio):
                self._on_agent_audio(event.pcm)
            elif isinstance(event, AgentText):
                self.counters["text_pieces"] += 1
                self._emit_all(self._words.feed(event.text, self._agent_ms()))
            elif isinstance(event, PeerError):
                self.counters["peer_errors"] += 1
                self._emit(Error(code=event.code, message=event.message, fatal=False))
            elif isinstance(event, PeerClosed):
                await self._peer_gone(event)
                return
        await self._peer_gone(PeerClosed(code=None, reason="transport ended", clean=False))

    async def _peer_gone(self, event: PeerClosed) -> None:
        # The vendor adapters' rules (ADR 0054), so hosts see one behaviour: a normal close
        # (1000) ends the call without an error; any other close is a fatal
        # ``peer_closed``; no close frame at all is a fatal ``peer_vanished``.
        if self.state != "connected":
            return
        self._emit_all(self._words.flush())
        if event.clean and event.code == NORMAL_CLOSE:
            await self._peer_closed(close_code=event.code, reason="peer")
            return
        how = "closed the session" if event.clean else "vanished (no close frame)"
        await self._fail(
            "peer_closed" if event.clean else "peer_vanished",
            f"Moshi {how}: code {event.code}, {event.reason}",
            close_code=event.code,
            reason="peer-error" if event.clean else "peer-vanished",
        )


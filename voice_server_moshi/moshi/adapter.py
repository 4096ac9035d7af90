"""The Moshi voice-model adapter: telephony audio <-> Moshi frames, on any transport.

Both directions go through the call-audio pipeline
(:class:`~voice_server_moshi.audio.call_audio.CallAudio`). Caller path: the call's format
(PCM16 or G.711) -> int16 (the VAD's input) -> float -> streaming resample to 24 kHz -> 80 ms
frames -> ``transport.send_frame`` (by one sender task, in order). Agent path: 24 kHz PCM ->
streaming resample to the call's rate -> whole frames of the call's frame size -> the call's
encoding -> one ``audio-chunk`` per frame.

Moshi is clocked by its input (one 80 ms frame out per frame in), so a pacing task on the
call's clock sends silence when the caller's media stalls for more than ``stall_fill_ms``
(unless it is null: a host that keeps the media continuous itself, on a virtual clock)
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
Where the transport carries a caller transcript (Kyutai STT beside Moshi, ADR 0075), its
pieces become caller ``transcript`` events by the same word rules on the caller's stream
clock, and :meth:`MoshiAdapter.disconnect` first asks for the STT's last words.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from typing import ClassVar

import numpy as np

from ..adapter import BaseAdapter, VoiceModelConfig
from ..audio.call_audio import CallAudio
from ..audio.resample import Resampler
from ..capabilities import Capabilities
from ..errors import LifecycleError, SteeringUnsupportedError
from ..events import AudioChunk, Error, SpeechEnded, SpeechStarted, Steering, Transcript
from ..vads import AgentAudioSink, Vad, VadConfig, VadFactory
from .components import resolve_transport, resolve_vad
from .settings import MoshiSettings
from .transcript import AgentWords
from .transport import (
    MOSHI_FRAME_SAMPLES,
    MOSHI_SAMPLE_RATE,
    PCM,
    AgentAudio,
    AgentText,
    CallerFlushed,
    CallerText,
    MoshiTransport,
    PeerClosed,
    PeerError,
    SteerUpdate,
)
from .transports import TransportFactory

__all__ = ["MAX_OUTBOUND_FRAMES", "MoshiAdapter"]

#: Caller frames queued for the transport while it is slow (2 s); beyond, the oldest go.
MAX_OUTBOUND_FRAMES = 25
#: How long disconnect() waits for the STT's last words (its delay, 0.5-2.5 s of audio, runs
#: in one engine tick embedded; a network round trip remote).
CALLER_FLUSH_TIMEOUT_S = 3.0

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
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.settings = settings or MoshiSettings()
        super().__init__(max_queued_events=self.settings.max_queued_events)
        self._injected = transport
        # Names resolve now, so one nobody registered fails when the adapter is made.
        self._vad_factory = vad if vad is not None else resolve_vad(
            self.settings.vad, self.settings.vad_settings)
        self._transport_factory = transport_factory
        if transport is None and transport_factory is None:
            self._transport_factory = resolve_transport(self.settings)
        self.transport: MoshiTransport | None = None
        self._outbound: deque[PCM] = deque()
        self._outbound_ready = asyncio.Event()
        self._t0 = 0.0
        self._fed_ms = 0.0  # call audio pushed towards Moshi: caller audio plus fill
        self._fill_debt_ms = 0.0  # fill not yet matched by late caller audio
        self._caller_ms = 0.0  # the caller's own stream time (VAD clock)
        self._agent_samples = 0  # 24 kHz samples received (transcript clock)
        self._stall_ms = float(self.settings.stall_fill_ms or 0)
        self._caller_words = AgentWords(role="caller")
        self._caller_flushed = asyncio.Event()
        self._drained = asyncio.Event()  # every frame taken was sent to the transport
        self._drained.set()

    @property
    def capabilities(self) -> Capabilities:
        """Follow the transport once connected (a remote server says what it does in its
        metadata): ``steering`` (before that, True only for the embedded engine) and
        ``caller_transcript`` (embedded with ``moshi.stt`` set, or ``serve --stt``)."""
        t = self.transport
        if t is not None:
            steer, caller = t.steerable, t.caller_transcript
        else:
            embedded = self._injected is None and self.settings.resolved_transport != "remote"
            steer = embedded
            caller = embedded and self.settings.stt is not None
        return dataclasses.replace(self.default_capabilities, steering=steer,
                                   caller_transcript=bool(caller))

    # -- steering (ADR 0070) -------------------------------------------------------------

    def _steer_transport(self) -> MoshiTransport:
        if self.state != "connected" or self.transport is None:
            raise LifecycleError(f"moshi: steering needs a connected session (state "
                                 f"{self.state!r})")
        if not self.transport.steerable:
            raise SteeringUnsupportedError(
                "moshi: this Moshi peer cannot be steered: Kyutai's own servers take no "
                "say/cancel requests; use the embedded transport or voice-server-moshi serve"
            )
        return self.transport

    async def say_text(self, text: str) -> str:
        rid = await self._steer_transport().say_text(text)
        self.counters["steer_requests"] += 1
        self._emit(Steering(rid, "queued", self._agent_ms()))
        return rid

    async def say_audio(self, audio: bytes, text: str = "", *, sample_rate: int = 24000) -> str:
        transport = self._steer_transport()
        if not isinstance(audio, bytes | bytearray | memoryview) or len(audio) % 2:
            raise ValueError("say_audio takes 16-bit LE mono PCM bytes (an even length)")
        pcm = np.frombuffer(bytes(audio), dtype="<i2").astype(np.float32) / 32768.0
        if sample_rate != MOSHI_SAMPLE_RATE:
            rs = Resampler(sample_rate, MOSHI_SAMPLE_RATE)  # raises on an unknown rate
            tail = np.zeros(round(rs.latency_ms * sample_rate / 1000) + 1, np.float32)
            pcm = np.concatenate([rs.process(pcm), rs.process(tail)]).astype(np.float32)
        rid = await transport.say_audio(pcm, text)
        self.counters["steer_requests"] += 1
        self._emit(Steering(rid, "queued", self._agent_ms()))
        return rid

    async def cancel_say(self, flush: bool = True) -> None:
        await self._steer_transport().cancel_say(flush)

    @property
    def persona_refusal(self) -> str | None:
        """Why :meth:`set_persona` cannot change this call's persona now (None: it can)."""
        if self.state != "connected" or self.transport is None:
            return f"set_persona needs a connected session (state {self.state!r})"
        return self.transport.persona_refusal

    async def set_persona(self, persona: str | None = None, voice: str | None = None) -> None:
        """Tell the agent who it is now (PersonaPlex; LiveKit's ``update_instructions``, a
        transfer): the call is re-prompted and the conversation so far is dropped from the
        model's context (ADR 0130); the embedded transport only. Raises PersonaError."""
        if self.state != "connected" or self.transport is None:
            raise LifecycleError(f"moshi: set_persona needs a connected session (state "
                                 f"{self.state!r})")
        await self.transport.set_persona(persona, voice)

    # -- BaseAdapter ---------------------------------------------------------------------

    async def _open(self, config: VoiceModelConfig) -> str:
        fmt = config.audio
        self._audio = CallAudio(fmt, MOSHI_SAMPLE_RATE, MOSHI_FRAME_SAMPLES)
        self._vad: Vad = self._vad_factory(VadConfig(
            fmt.sample_rate, self.settings.vad_threshold_db, self.settings.vad_hangover_ms,
            config.call_id,
        ))
        self._vad_sink = self._vad if isinstance(self._vad, AgentAudioSink) else None
        self._words = AgentWords()
        self.transport = self._injected or self._make_transport()
        session_id = await self.transport.open(config.call_id)
        # Never fill a gap a host's own chunking explains (see ADR 0022).
        self._stall_ms = float(max(self.settings.stall_fill_ms or 0, 2 * fmt.frame_ms))
        self._t0 = asyncio.get_running_loop().time()
        self._spawn(self._receive_loop(self.transport), "receive")
        self._spawn(self._sender_loop(self.transport), "sender")
        # One filler per call (ADR 0140): a host with its own media clock conceals gaps.
        if self.settings.stall_fill_ms is not None and config.media_clock == "adapter":
            self._spawn(self._pacing_loop(), "pacing")
        return session_id

    async def _send_audio(self, chunk: bytes) -> None:
        fmt = self.config.audio
        pcm = self._audio.decode(chunk)  # the one decode: the VAD and Moshi share it
        chunk_ms = self._audio.ms(len(pcm))
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
        self._feed(self._audio.to_model(pcm), chunk_ms)

    async def _close(self) -> None:
        if self.transport is not None:
            await self.transport.close()

    async def disconnect(self) -> None:
        if self.state == "connected":
            await self._flush_caller()
            self._emit_all(self._words.flush())
            self._emit_all(self._caller_words.flush())
        await super().disconnect()

    async def _flush_caller(self) -> None:
        """Bring the caller transcript's last words in before ``disconnected``."""
        t = self.transport
        if t is None or not t.caller_transcript:
            return
        try:
            # The caller audio already taken reaches the STT first.
            await asyncio.wait_for(self._drained.wait(), CALLER_FLUSH_TIMEOUT_S)
            await asyncio.wait_for(t.flush_caller(), CALLER_FLUSH_TIMEOUT_S)
            await asyncio.wait_for(self._caller_flushed.wait(), CALLER_FLUSH_TIMEOUT_S)
        except (TimeoutError, Exception) as exc:  # the peer may be gone: end anyway
            self.log.warning("caller_flush_incomplete", error=repr(exc))

    # -- transports ----------------------------------------------------------------------

    def _make_transport(self) -> MoshiTransport:
        assert self._transport_factory is not None  # set whenever no transport was injected
        return self._transport_factory(self.settings)

    # -- caller side ---------------------------------------------------------------------

    def _wall_ms(self) -> float:
        return 1000.0 * (asyncio.get_running_loop().time() - self._t0)

    def _feed(self, frames: list[PCM], ms: float) -> None:
        """Queue Moshi frames made from ``ms`` of call audio (caller audio or fill)."""
        self._fed_ms += ms
        for frame in frames:
            if len(self._outbound) >= MAX_OUTBOUND_FRAMES:
                self._outbound.popleft()
                self.counters["frames_dropped"] += 1
            self._outbound.append(frame)
            self._drained.clear()
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
            if not self._outbound:
                self._drained.set()

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
            self._feed(self._audio.silence_to_model(n * fmt.samples_per_frame),
                       n * fmt.frame_ms)

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
        for audio, frame in self._audio.from_model(pcm):
            if self._vad_sink is not None:
                self._vad_sink.agent_audio(frame, self.counters["chunks_out"] * fmt.frame_ms)
            self._emit(AudioChunk(audio=audio, format=fmt))
            self.counters["chunks_out"] += 1
        self._emit_all(self._words.advance(self._agent_ms()))

    async def _receive_loop(self, transport: MoshiTransport) -> None:
        async for event in transport.receive():
            if isinstance(event, AgentAudio):
                self._on_agent_audio(event.pcm)
            elif isinstance(event, AgentText):
                self.counters["text_pieces"] += 1
                self._emit_all(self._words.feed(event.text, self._agent_ms()))
            elif isinstance(event, SteerUpdate):
                if event.status != "queued":  # say_* reported queued already
                    # Steered words never glue onto Moshi's own: a request's start and end
                    # are word boundaries in the transcript.
                    self._emit_all(self._words.flush())
                    self._emit(Steering(event.request_id, event.status, self._agent_ms(),
                                        event.message))
            elif isinstance(event, CallerText):
                self._on_caller_text(event)
            elif isinstance(event, CallerFlushed):
                self.counters["caller_flushes"] += 1
                self._caller_flushed.set()
            elif isinstance(event, PeerError):
                self.counters["peer_errors"] += 1
                self._emit(Error(code=event.code, message=event.message, fatal=False))
            elif isinstance(event, PeerClosed):
                await self._peer_gone(event)
                return
        await self._peer_gone(PeerClosed(code=None, reason="transport ended", clean=False))

    def _on_caller_text(self, event: CallerText) -> None:
        if event.text is None:
            self._emit_all(self._caller_words.advance(event.stream_ms))
            return
        self.counters["caller_pieces"] += 1
        self._emit_all(self._caller_words.feed(event.text, event.stream_ms))

    async def _peer_gone(self, event: PeerClosed) -> None:
        # The vendor adapters' rules (BaseAdapter._peer_ended, ADR 0054): hosts see one
        # behaviour whichever model is behind the adapter.
        if self.state != "connected":
            return
        self._emit_all(self._words.flush())
        self._emit_all(self._caller_words.flush())
        how = "closed the session" if event.clean else "vanished (no close frame)"
        await self._peer_ended(event.code, event.clean,
                               f"Moshi {how}: code {event.code}, {event.reason}")

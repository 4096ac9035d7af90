"""``MoshiService``: Moshi as a Pipecat frame processor, built on the plugin's own parts.

The service does not talk to Moshi itself: it creates the registered ``moshi`` adapter and
the ``full-duplex`` mode through the registry (exactly what a voice-server host does) and
is the mode's host. Pipecat frames go in, the mode's callbacks come out as frames:

==============================================  ==============================================
Pipecat -> service                              what the service does
==============================================  ==============================================
``StartFrame``                                  create the mode at the pipeline's input rate,
                                                connect the adapter (remote or embedded)
``InputAudioRawFrame`` (any rate)               ``mode.push_caller_audio`` (resampled to the
                                                mode's rate if it differs); not forwarded
``TTSSpeakFrame``                               ``mode.create_response(text=...)`` (steering,
                                                ADR 0070); an ``ErrorFrame`` when the adapter
                                                cannot steer (``SteeringUnsupportedError``)
``InterruptionFrame`` from elsewhere            ``mode.cancel_response()`` (stops steered
                                                speech; a no-op without steering)
``EndFrame`` / ``CancelFrame``                  ``mode.stop()``: the adapter disconnects
==============================================  ==============================================

==============================================  ==============================================
mode callback                                   Pipecat frames
==============================================  ==============================================
``on_agent_audio`` (every 20 ms, silence too)   ``OutputAudioRawFrame`` at the output rate
``on_user_turn_started(barge_in=False)``        ``UserStartedSpeakingFrame`` (broadcast)
``on_user_turn_started(barge_in=True)``         ``UserStartedSpeakingFrame`` then
                                                ``InterruptionFrame`` (broadcast): only on a
                                                barge-in, never on a backchannel
``on_user_turn_ended``                          ``UserStoppedSpeakingFrame`` (broadcast)
``on_agent_turn_started`` / ``_ended``          ``BotStartedSpeakingFrame`` /
                                                ``BotStoppedSpeakingFrame`` (broadcast)
``on_transcript`` agent, final                  ``TTSTextFrame``, one per word (ADR 0021)
``on_transcript`` caller                        ``TranscriptionFrame`` / interim
``on_error``                                    ``ErrorFrame`` upstream (fatal as reported)
``on_disconnected`` (not asked for)             ``EndWorkerFrame``: the pipeline ends cleanly
==============================================  ==============================================

Agent audio is plain ``OutputAudioRawFrame``, not ``TTSAudioRawFrame``: the output
transport then leaves bot-speaking detection to the mode (it would otherwise call the
whole continuous stream "speaking"), and no ``TTSStoppedFrame`` makes it pad a partial
chunk with silence mid-stream (ADR 0090).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.utils.text.base_text_aggregator import AggregationType
from pipecat.utils.time import time_now_iso8601

from .._log import get_logger
from ..adapter import VoiceModelAdapter, VoiceModelConfig
from ..audio.resample import Resampler
from ..errors import SteeringUnsupportedError
from ..events import Role
from ..formats import AudioFormat
from ..modes.clock import Clock, ManualClock
from ..registry import Registry, load_registry

__all__ = ["STEERING_UNAVAILABLE", "Decision", "MoshiService"]

#: ErrorFrame text prefix when a ``TTSSpeakFrame`` reaches an adapter that cannot steer.
STEERING_UNAVAILABLE = "moshi: steering unavailable"
_MODE_RATES = (8000, 16000, 24000, 48000)


@dataclass(frozen=True, slots=True)
class Decision:
    """One mode callback the service turned into frames (kept for tests and benches)."""

    kind: str  # user-started|user-stopped|bot-started|bot-stopped|steering|disconnected
    t_ms: float
    barge_in: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


class MoshiService(FrameProcessor):
    """Moshi in a Pipecat pipeline: ``transport.input() -> MoshiService -> transport.output()``.

    ``moshi`` and ``full_duplex`` are the host config's ``[moshi]`` and ``[full-duplex]``
    sections (mappings or settings dataclasses; bad keys raise ``SettingsError`` here, at
    construction). ``adapter_factory`` replaces the registry's adapter (tests plug a
    scripted agent); ``clock`` is the mode's clock: ``RealClock(speed)`` by default (real
    time: the mode sends silence when caller audio is late), or ``ManualClock()`` to tick
    the mode once per 20 ms of caller audio received and wait for the model's answer
    (offline runs and tests: deterministic under any load). One service serves one call,
    like the adapter it wraps.
    """

    def __init__(
        self,
        *,
        moshi: Mapping[str, Any] | Any | None = None,
        full_duplex: Mapping[str, Any] | Any | None = None,
        adapter: str = "moshi",
        mode: str = "full-duplex",
        registry: Registry | None = None,
        adapter_factory: Callable[[], VoiceModelAdapter] | None = None,
        clock: Clock | None = None,
        call_id: str | None = None,
        frame_ms: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._registry = registry or load_registry()
        self.adapter: VoiceModelAdapter = (
            adapter_factory() if adapter_factory is not None
            else self._registry.create_adapter(adapter, moshi)
        )
        self._mode_name = mode
        self._mode_settings = full_duplex
        self._clock = clock
        self._frame_ms = frame_ms
        self._config_id = call_id
        self.mode: Any = None
        self.decisions: list[Decision] = []
        self._out: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self._pusher: asyncio.Task[None] | None = None
        self._in_rate = 16000
        self._out_rate = 16000
        self._mode_rate = 16000
        self._in_resamplers: dict[int, Resampler] = {}
        self._out_resampler: Resampler | None = None
        self._stopping = False
        self._started = False
        self._pending_bytes = 0
        self._manual_q: asyncio.Queue[bytes] = asyncio.Queue()
        self._ticker: asyncio.Task[None] | None = None
        #: Set True before the call starts to record per-frame wall times (benchmarks):
        #: when caller audio reached the mode, and when the mode played each agent frame.
        self.record_timing = False
        self.caller_in_wall: list[float] = []
        self.agent_out_wall: list[float] = []
        #: Caller frames the mode had consumed when it played each agent frame.
        self.agent_out_consumed: list[int] = []
        #: Set once the adapter is connected and the mode's clock runs.
        self.ready = asyncio.Event()
        #: Awaited with the exception when the adapter cannot connect, before the pipeline
        #: is ended (a transport's owner closes its socket with its own code first).
        self.on_connect_failed: Callable[[Exception], Awaitable[None]] | None = None
        self.log = get_logger("voice_server_moshi.pipecat", call_id=call_id or "-")

    # -- Pipecat side ------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        self._in_rate = int(setup.audio_in_sample_rate)
        self._out_rate = int(setup.audio_out_sample_rate)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, InputAudioRawFrame):
            await self._caller_audio(frame)
        elif isinstance(frame, TTSSpeakFrame):
            await self._say(frame.text)
        elif isinstance(frame, InterruptionFrame):
            self._cancel_steering()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._stop("end-frame", drain=True)
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop("cancel-frame", drain=False)
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await self._stop("cleanup", drain=False)
        await super().cleanup()  # type: ignore[no-untyped-call]

    # -- lifecycle ---------------------------------------------------------------------

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        rate = self._in_rate if self._in_rate in _MODE_RATES else 16000
        self._mode_rate = rate
        if self._out_rate != rate:
            self._out_resampler = Resampler(rate, self._out_rate)
        fmt = AudioFormat(encoding="pcm16", sample_rate=rate, frame_ms=self._frame_ms)
        cfg = (VoiceModelConfig(audio=fmt) if self._config_id is None
               else VoiceModelConfig(call_id=self._config_id, audio=fmt))
        self.log = get_logger("voice_server_moshi.pipecat", call_id=cfg.call_id)
        self.mode = self._registry.create_mode(
            self._mode_name, self._mode_settings, adapter=self.adapter,
            host=_FrameHost(self), config=cfg, clock=self._clock,
        )
        self._pusher = self.create_task(self._push_loop(), "moshi-frames")
        try:
            await self.mode.start()
        except Exception as exc:  # ConnectError, ServerBusyError, ...: the call cannot run
            self.log.warning("moshi_connect_failed", error=repr(exc))
            self._stopping = True
            if self.on_connect_failed is not None:
                await self.on_connect_failed(exc)
            await self.push_error(f"moshi: connect failed: {exc}", exception=exc, fatal=True)
            return
        self.ready.set()
        self.log.info("pipecat_moshi_started", in_rate=self._in_rate, out_rate=self._out_rate,
                      mode_rate=rate)

    async def _stop(self, reason: str, *, drain: bool) -> None:
        if self._stopping and self._pusher is None:
            return
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            if drain:  # input-clocked: play the caller audio already received first
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._manual_q.join(), 30.0)
            await self.cancel_task(ticker)
        self._stopping = True
        if self.mode is not None and not self.mode.ended:
            await self.mode.stop(reason)
        pusher, self._pusher = self._pusher, None
        if pusher is not None:
            if drain:
                self._out.put_nowait(None)  # flush what the mode said before the end
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(pusher), 2.0)
            await self.cancel_task(pusher)

    # -- frames in ---------------------------------------------------------------------

    async def _caller_audio(self, frame: InputAudioRawFrame) -> None:
        if self.mode is None or self.mode.ended:
            return
        audio = frame.audio
        if frame.num_channels != 1:
            pcm = np.frombuffer(audio, dtype=np.int16).reshape(-1, frame.num_channels)
            audio = pcm[:, 0].copy().tobytes()
        if frame.sample_rate != self._mode_rate:
            rs = self._in_resamplers.get(frame.sample_rate)
            if rs is None:
                rs = self._in_resamplers[frame.sample_rate] = Resampler(
                    frame.sample_rate, self._mode_rate)
            audio = np.asarray(rs.process(np.frombuffer(audio, dtype=np.int16)),
                               dtype=np.int16).tobytes()
        if isinstance(self._clock, ManualClock):
            # Ticked off this task: Pipecat serves queued system frames (audio) before
            # data frames, so waiting here for the model would hold TTSSpeakFrame back.
            self._manual_q.put_nowait(audio)
            if self._ticker is None:
                self._ticker = self.create_task(self._tick_with_input(), "moshi-ticks")
            return
        if self.record_timing:
            self.caller_in_wall.append(time.perf_counter())
        self.mode.push_caller_audio(audio)

    async def _tick_with_input(self) -> None:
        # Input-clocked: each whole frame of caller audio is one tick of the mode, after
        # which the model is given time to answer (like the reference host's virtual
        # clock): deterministic whatever the machine's load, as fast as the model allows.
        frame_bytes = self._mode_rate * self._frame_ms // 1000 * 2
        while True:
            audio = await self._manual_q.get()
            try:
                if self.record_timing:
                    self.caller_in_wall.append(time.perf_counter())
                self.mode.push_caller_audio(audio)
                self._pending_bytes += len(audio)
                while self._pending_bytes >= frame_bytes and not self.mode.ended:
                    self._pending_bytes -= frame_bytes
                    await self.mode.tick()
                    await self.mode.settle()
            finally:
                self._manual_q.task_done()

    async def _say(self, text: str) -> None:
        if self.mode is None or self.mode.ended:
            await self.push_error(f"{STEERING_UNAVAILABLE}: the call is not running")
            return
        try:
            task = self.mode.create_response(text=text)
        except SteeringUnsupportedError as exc:  # the adapter cannot steer: say so, go on
            await self.push_error(f"{STEERING_UNAVAILABLE}: {exc}; TTSSpeakFrame ignored")
            return
        except Exception as exc:  # empty text, a bad request: the call goes on
            await self.push_error(f"moshi: create_response failed: {exc}", exception=exc)
            return
        if task is not None:
            task.add_done_callback(self._said)

    def _said(self, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.emit("error", ("steering_failed", str(task.exception()), False))

    def _cancel_steering(self) -> None:
        if self.mode is not None and not self.mode.ended:
            try:
                self.mode.cancel_response()  # a no-op (logged) when the adapter cannot steer
            except Exception:
                self.log.exception("cancel_response_failed")

    # -- frames out --------------------------------------------------------------------

    def emit(self, kind: str, payload: Any = None) -> None:
        """Queue one output for the pusher (mode callbacks are synchronous)."""
        self._out.put_nowait((kind, payload))

    async def _push_loop(self) -> None:
        while True:
            item = await self._out.get()
            if item is None:
                return
            kind, payload = item
            try:
                await self._push_one(kind, payload)
            except Exception:
                self.log.exception("pipecat_push_failed", kind=kind)

    async def _push_one(self, kind: str, payload: Any) -> None:
        if kind == "audio":
            audio: bytes = payload
            if self._out_resampler is not None:
                pcm = self._out_resampler.process(np.frombuffer(audio, dtype=np.int16))
                audio = np.asarray(pcm, dtype=np.int16).tobytes()
            if audio:
                await self.push_frame(OutputAudioRawFrame(
                    audio=audio, sample_rate=self._out_rate, num_channels=1))
        elif kind == "user-started":
            await self.broadcast_frame(UserStartedSpeakingFrame)
            if payload:  # a barge-in, and only a barge-in, interrupts the bot
                await self.broadcast_interruption()  # type: ignore[no-untyped-call]
        elif kind == "user-stopped":
            await self.broadcast_frame(UserStoppedSpeakingFrame)
        elif kind == "bot-started":
            await self.broadcast_frame(BotStartedSpeakingFrame)
        elif kind == "bot-stopped":
            await self.broadcast_frame(BotStoppedSpeakingFrame)
        elif kind == "agent-text":
            await self.push_frame(TTSTextFrame(text=payload, aggregated_by=AggregationType.WORD))
        elif kind == "caller-text":
            text, final = payload
            cls = TranscriptionFrame if final else InterimTranscriptionFrame
            await self.push_frame(cls(text=text, user_id="caller", timestamp=time_now_iso8601()))
        elif kind == "error":
            code, message, fatal = payload
            await self.push_error(f"moshi {code}: {message}", fatal=fatal)
        elif kind == "end":
            await self.push_frame(EndWorkerFrame(reason=f"moshi disconnected: {payload}"))


class _FrameHost:
    """The mode's host: each callback becomes queued frames, in order."""

    def __init__(self, svc: MoshiService) -> None:
        self.svc = svc

    def _decide(self, kind: str, t_ms: float, barge_in: bool = False, **detail: Any) -> None:
        self.svc.decisions.append(Decision(kind, t_ms, barge_in, detail))

    def on_user_turn_started(self, t_ms: float, barge_in: bool) -> None:
        self._decide("user-started", t_ms, barge_in)
        self.svc.emit("user-started", barge_in)

    def on_user_turn_ended(self, t_ms: float) -> None:
        self._decide("user-stopped", t_ms)
        self.svc.emit("user-stopped")

    def on_agent_audio(self, audio: bytes, t_ms: float) -> None:
        if self.svc.record_timing:
            self.svc.agent_out_wall.append(time.perf_counter())
            self.svc.agent_out_consumed.append(int(self.svc.mode.counters["caller_frames"]))
        self.svc.emit("audio", audio)

    def on_agent_turn_started(self, t_ms: float, steered: bool = False) -> None:
        self._decide("bot-started", t_ms, steered=steered)
        self.svc.emit("bot-started")

    def on_agent_turn_ended(self, t_ms: float, interrupted: bool) -> None:
        self._decide("bot-stopped", t_ms, interrupted=interrupted)
        self.svc.emit("bot-stopped")

    def on_agent_steering(self, request_id: str, status: str, t_ms: float) -> None:
        self._decide("steering", t_ms, request_id=request_id, status=status)

    def on_transcript(self, role: Role, text: str, final: bool, t_ms: float) -> None:
        if role == "agent":
            if final:  # whole words; the interim ones are the same word growing
                self.svc.emit("agent-text", text)
        else:
            self.svc.emit("caller-text", (text, final))

    def on_error(self, code: str, message: str, fatal: bool) -> None:
        self.svc.emit("error", (code, message, fatal))

    def on_disconnected(self, reason: str, t_ms: float) -> None:
        self._decide("disconnected", t_ms, reason=reason)
        if not self.svc._stopping:  # the adapter ended the call: end the pipeline cleanly
            self.svc.emit("end", reason)

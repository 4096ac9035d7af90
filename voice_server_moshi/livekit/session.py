"""One call of Moshi inside an ``AgentSession``: a ``livekit.agents.llm.RealtimeSession``
that is the full-duplex mode's host (ADR 0125). The mapping (docs/livekit.md):

=========================================  ===============================================
mode / adapter                             LiveKit
=========================================  ===============================================
``on_user_turn_started`` (barge-in or      ``input_speech_started``; backchannels start no
not)                                       turn, so they never reach LiveKit
``on_user_turn_ended``                     ``input_speech_stopped``
caller transcripts (words)                 ``input_audio_transcription_completed``: interim
                                           per word, one final per caller turn
``on_agent_turn_started`` / ``_ended``     one generation per agent turn (``between_turns``
                                           says what the audio between turns does)
``on_agent_audio``                         the open generation's audio stream
agent transcript, final words              the open generation's text stream
``on_error`` / unexpected disconnect       ``error`` (recoverable unless fatal)
=========================================  ===============================================

``say(text)`` steers Moshi (``mode.create_response``) and is a generation of its own from
the request until the steered speech and its agent turn end; ``interrupt()`` cancels
steering, applies the mode's barge-in policy and ends the generation in flight. Whatever
Moshi cannot do raises :class:`~livekit.agents.llm.RealtimeError` with the reason.

A ``session.say`` ends the generation in flight as soon as LiveKit schedules it (the
steered speech is what Moshi plays next; :mod:`.says`), so it does not wait behind Moshi's
turn; no turn generation opens until the say's own does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit import rtc
from livekit.agents import llm
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import is_given

from .._log import get_logger
from ..adapter import VoiceModelAdapter, VoiceModelConfig
from ..errors import SteeringUnsupportedError
from ..events import Role
from ..formats import AudioFormat
from ..modes.feed import CallerFeed
from ..registry import Registry
from .caller_text import CallerText
from .generation import Generation, GenerationKind
from .options import ModelOptions, session_capabilities
from .refusals import apply_persona, check_chat_ctx, check_tool_choice, check_tools
from .says import WaitingSays

__all__ = ["Decision", "MoshiRealtimeSession"]

#: Agent words that came before any generation opened still belong to the next one when
#: it opens within this much call time (Moshi's text leads its audio a little).
WORD_LEAD_MS = 1000.0
_FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class Decision:
    """One mode callback the session acted on (kept for tests and benches)."""

    kind: str  # user-started|user-stopped|agent-started|agent-stopped|steering|disconnected
    t_ms: float
    barge_in: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


class MoshiRealtimeSession(llm.RealtimeSession[Any]):
    def __init__(self, model: llm.RealtimeModel, opts: ModelOptions, registry: Registry,
                 new_adapter: Callable[[], VoiceModelAdapter]) -> None:
        super().__init__(model)
        self._model = model
        self._opts = opts
        self.adapter = new_adapter()
        rate = opts.sample_rate
        fmt = AudioFormat(encoding="pcm16", sample_rate=rate, frame_ms=_FRAME_MS)
        cfg = (VoiceModelConfig(audio=fmt) if opts.call_id is None
               else VoiceModelConfig(call_id=opts.call_id, audio=fmt))
        self.call_id = cfg.call_id
        self.log = get_logger("voice_server_moshi.livekit", call_id=cfg.call_id)
        clock = opts.new_clock()
        self.mode: Any = registry.create_mode(
            opts.mode, opts.full_duplex, adapter=self.adapter, host=_Host(self), config=cfg,
            clock=clock)
        self.feed = CallerFeed(self.mode, rate=rate, frame_ms=_FRAME_MS, clock=clock)
        self.rate = rate
        self.between_turns = opts.between_turns
        self.decisions: list[Decision] = []
        #: Set once the adapter is connected and the mode's clock runs.
        self.ready = asyncio.Event()
        self._gen: Generation | None = None
        self._in_turn = False
        self._muted = False  # after interrupt(): no audio until Moshi's turn is over
        self._early_words: list[tuple[float, str]] = []
        self._caller = CallerText()
        self._chat_ctx = llm.ChatContext.empty()
        #: The persona in force (PersonaPlex): moshi.persona, then the Agent's instructions.
        self.persona: str | None = getattr(getattr(self.adapter, "settings", None), "persona",
                                           None)
        self._own_ids: set[str] = set()
        self._closing = False
        self._video_warned = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dropped_ms = 0.0  # agent audio outside any generation (between turns)
        #: Set True before the call starts to record when each agent frame was handed on.
        self.record_timing = False
        self.agent_out_wall: list[float] = []
        self.agent_out_consumed: list[int] = []  # caller frames the mode had consumed
        self.feed.record_timing = False  # set with record_timing by benchmarks
        self._feeder: asyncio.Task[None] | None = None
        self.says = WaitingSays(self._make_way)  # follows the AgentSession's says
        self._starter = self._spawn(self._start(), "moshi-start")

    # -- lifecycle ---------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _start(self) -> None:
        try:
            await self.mode.start()
        except Exception as exc:  # ConnectError, ServerBusyError...: this call cannot run
            self.log.warning("moshi_connect_failed", error=repr(exc))
            self._error(llm.RealtimeError(f"moshi: connect failed: {exc}"), recoverable=False)
            return
        self._feeder = self._spawn(self.feed.run(), "moshi-feed")
        self.ready.set()
        self.log.info("livekit_moshi_started", rate=self.rate, clock=self._opts.clock,
                      between_turns=self.between_turns)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(Exception):
            await self._starter
        if self.ready.is_set():
            await self.feed.drain()  # input-clocked: play what the caller already said
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        if not self.mode.ended:
            await self.mode.stop("livekit-close")
        self._close_generation()
        self.says.stop()
        for task in list(self._tasks):
            task.cancel()

    @property
    def capabilities(self) -> llm.RealtimeCapabilities:
        base = self._model.capabilities
        return session_capabilities(base, self.adapter) if self.ready.is_set() else base

    # -- the AgentSession's speeches -----------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any] | None = None) -> Callable[..., Any]:
        if callback is not None:
            self.says.follow_owner(callback)
        return super().on(event, callback)

    def _make_way(self, why: str) -> None:
        """End the generation in flight so LiveKit gets to the waiting say now; a say still
        being steered keeps its generation until its steering ends."""
        gen = self._gen
        if not self.says.waiting or gen is None or (gen.kind == "say"
                                                     and not gen.steering_done):
            return
        self._close_generation()
        self._decide("make-way", self.mode.t_ms, why=why, ended=gen.kind)

    # -- caller side -------------------------------------------------------------------

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        if self._closing:
            return
        self.feed.push(bytes(frame.data), frame.sample_rate, frame.num_channels)

    def push_video(self, frame: rtc.VideoFrame) -> None:
        if not self._video_warned:  # loud once, not per frame: Moshi hears audio only
            self._video_warned = True
            self.log.warning("livekit_video_dropped", why="Moshi takes no video")

    def commit_audio(self) -> None:
        raise llm.RealtimeError("moshi: there is no input buffer to commit: Moshi hears the "
                                "caller continuously and its turns come from the mode")

    def clear_audio(self) -> None:
        dropped = self.feed.clear()  # caller audio received and not yet heard by Moshi
        self.log.info("livekit_caller_audio_cleared", dropped_bytes=dropped)

    # -- requests ----------------------------------------------------------------------

    @property
    def chat_ctx(self) -> llm.ChatContext:
        return self._chat_ctx.copy()

    @property
    def tools(self) -> llm.ToolContext:
        return llm.ToolContext.empty()

    async def update_instructions(self, instructions: str) -> None:
        # PersonaPlex: the Agent's instructions are the call's persona and win over
        # moshi.persona (ADR 0125); empty ones, or the persona in force, change nothing.
        text = instructions.strip()
        if not text or text == self.persona:
            return
        await asyncio.shield(self._starter)  # a persona needs the connected call
        await apply_persona(self.adapter, text)
        self.persona = text

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        check_chat_ctx(self._chat_ctx, chat_ctx, self._own_ids)
        self._chat_ctx = chat_ctx.copy()

    async def update_tools(self, tools: list[llm.Tool]) -> None:
        check_tools(tools)

    def update_options(self, *, tool_choice: NotGivenOr[llm.ToolChoice | None] = NOT_GIVEN
                       ) -> None:
        if is_given(tool_choice):
            check_tool_choice(tool_choice)

    def generate_reply(
        self,
        *,
        instructions: NotGivenOr[str] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        tools: NotGivenOr[list[llm.Tool]] = NOT_GIVEN,
    ) -> asyncio.Future[llm.GenerationCreatedEvent]:
        fut: asyncio.Future[llm.GenerationCreatedEvent] = asyncio.Future()
        why = ("Moshi takes no instructions" if is_given(instructions) and instructions
               else "Moshi decides by itself when to speak")
        fut.set_exception(llm.RealtimeError(
            f"moshi: generate_reply is not available: {why}; use session.say(text) to make "
            "it say something (steering)", code="unsupported"))
        return fut

    def truncate(self, *, message_id: str, modalities: list[Literal["text", "audio"]],
                 audio_end_ms: int, audio_transcript: NotGivenOr[str] = NOT_GIVEN) -> None:
        raise llm.RealtimeError("moshi: messages cannot be truncated: Moshi's context is the "
                                "audio it heard and said (message_truncation is False)")

    def say(self, text: str | AsyncIterable[str]) -> asyncio.Future[llm.GenerationCreatedEvent]:
        fut: asyncio.Future[llm.GenerationCreatedEvent] = asyncio.Future()
        self.says.handed()
        self._spawn(self._say(text, fut), "moshi-say")
        return fut

    async def _say(self, text: str | AsyncIterable[str],
                   fut: asyncio.Future[llm.GenerationCreatedEvent]) -> None:
        if not isinstance(text, str):
            text = "".join([piece async for piece in text])
        await self.ready.wait()
        if self.mode.ended or self._closing:
            fut.set_exception(llm.RealtimeError("moshi: say after the call ended"))
            return
        try:
            task = self.mode.create_response(text=text)
        except SteeringUnsupportedError as exc:
            fut.set_exception(llm.RealtimeError(f"moshi: cannot say text: {exc}",
                                                code="steering_unsupported"))
            return
        except ValueError as exc:  # empty text
            fut.set_exception(llm.RealtimeError(f"moshi: {exc}"))
            return
        gen = self._open("say", user_initiated=True)
        task.add_done_callback(lambda t: self._said(gen, t))
        assert gen.created is not None
        fut.set_result(gen.created)

    def _said(self, gen: Generation, task: asyncio.Task[str]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is None and not task.cancelled():
            gen.request_id = task.result()
            return
        self._error(llm.RealtimeError(f"moshi: say failed: {exc}"), recoverable=True)
        if self._gen is gen:
            self._close_generation()

    def interrupt(self) -> None:
        if not self.ready.is_set() or self.mode.ended:
            return  # no call running: nothing to stop
        if self.adapter.capabilities.steering:
            # The steered speech stops at the model's next step; queued says are dropped.
            self.mode.cancel_response(flush_playout=False)
        self.mode.apply_barge_in_policy()
        self._close_generation()
        self._muted = True
        self._decide("interrupt", self.mode.t_ms)

    # -- generations -------------------------------------------------------------------

    def _open(self, kind: GenerationKind, *, user_initiated: bool) -> Generation:
        self._close_generation()
        now = self.mode.t_ms
        gen = self._gen = Generation(kind=kind, opened_ms=now)
        self._own_ids.add(gen.id)
        self._muted = False
        event = gen.event(user_initiated=user_initiated)
        if not user_initiated:  # a say's event goes back through its future
            self.emit("generation_created", event)
        for t, word in self._early_words:
            if now - t <= WORD_LEAD_MS:
                gen.word(word)
        self._early_words.clear()
        return gen

    def _close_generation(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None and (msg := gen.close()) is not None:
            self._chat_ctx.insert(msg)

    def _error(self, error: Exception, *, recoverable: bool) -> None:
        self.emit("error", llm.RealtimeModelError(
            timestamp=time.time(), label=self._model.label, error=error,
            recoverable=recoverable))

    def _decide(self, kind: str, t_ms: float, barge_in: bool = False, **detail: Any) -> None:
        self.decisions.append(Decision(kind, t_ms, barge_in, detail))

    def _transcribed(self, ev: llm.InputTranscriptionCompleted | None) -> None:
        if ev is None:
            return
        if ev.is_final:
            self._own_ids.add(ev.item_id)
            self._chat_ctx.insert(llm.ChatMessage(id=ev.item_id, role="user",
                                                  content=[ev.transcript]))
        self.emit("input_audio_transcription_completed", ev)


class _Host:
    """The mode's host: each callback becomes LiveKit events and generation traffic."""

    def __init__(self, s: MoshiRealtimeSession) -> None:
        self.s = s

    def on_user_turn_started(self, t_ms: float, barge_in: bool) -> None:
        s = self.s
        s._decide("user-started", t_ms, barge_in)
        s._transcribed(s._caller.turn_started())
        s.emit("input_speech_started", llm.InputSpeechStartedEvent())

    def on_user_turn_ended(self, t_ms: float) -> None:
        s = self.s
        s._decide("user-stopped", t_ms)
        s._caller.turn_ended(s.mode.t_ms)
        s.emit("input_speech_stopped", llm.InputSpeechStoppedEvent(
            user_transcription_enabled=s.capabilities.user_transcription))

    def on_agent_audio(self, audio: bytes, t_ms: float) -> None:
        s = self.s
        s._transcribed(s._caller.tick(t_ms))
        gen = s._gen
        if gen is None or s._muted:
            s.dropped_ms += len(audio) / 2 / s.rate * 1000.0
            return
        if s.record_timing:
            s.agent_out_wall.append(time.perf_counter())
            s.agent_out_consumed.append(int(s.mode.counters["caller_frames"]))
        gen.audio(rtc.AudioFrame(audio, s.rate, 1, len(audio) // 2))

    def on_agent_turn_started(self, t_ms: float, steered: bool = False) -> None:
        s = self.s
        s._decide("agent-started", t_ms, steered=steered)
        s._in_turn = True
        gen = s._gen
        if s.says.waiting and gen is None:
            return  # a say is about to open its generation: it carries this turn
        if gen is None or gen.kind != "say" or gen.steering_done:
            s._open("turn", user_initiated=False)  # a say's generation carries its turn

    def on_agent_turn_ended(self, t_ms: float, interrupted: bool) -> None:
        s = self.s
        s._decide("agent-stopped", t_ms, interrupted=interrupted)
        s._in_turn = False
        gen = s._gen
        if s.between_turns == "play":
            if gen is None and s._muted and not s.says.waiting:  # interrupt()ed turn over
                s._open("turn", user_initiated=False)  # "play" forwards the stream again
            return
        if gen is None:
            return
        if gen.kind == "turn" or gen.steering_done:
            s._close_generation()

    def on_agent_steering(self, request_id: str, status: str, t_ms: float) -> None:
        s = self.s
        s._decide("steering", t_ms, request_id=request_id, status=status)
        gen = s._gen
        if gen is None or gen.kind != "say" or status in ("queued", "started"):
            return
        if gen.request_id not in (None, request_id):
            return  # an older request's end: this say is still to come
        gen.steering_done = True
        if status != "finished" or (not s._in_turn and s.between_turns == "drop"):
            s._close_generation()
        else:
            s._make_way("say-steered")

    def on_transcript(self, role: Role, text: str, final: bool, t_ms: float) -> None:
        s = self.s
        if role == "caller":
            s._transcribed(s._caller.word(text, final))
        elif final:  # whole words; the interim ones are the same word growing
            if s._gen is not None and not s._muted:
                s._gen.word(text)
            else:
                s._early_words = [*s._early_words[-50:], (t_ms, text)]

    def on_error(self, code: str, message: str, fatal: bool) -> None:
        self.s._error(llm.RealtimeError(f"moshi {code}: {message}", code=code),
                      recoverable=not fatal)

    def on_disconnected(self, reason: str, t_ms: float) -> None:
        s = self.s
        s._decide("disconnected", t_ms, reason=reason)
        s._transcribed(s._caller.close())
        s._close_generation()
        if not s._closing:  # the adapter ended the call: the session cannot go on
            s._error(llm.RealtimeError(f"moshi disconnected: {reason}"), recoverable=False)

"""The reference host: a small turn-based orchestrator wired to the plugin, as a host would.

It loads the registry (entry points), creates the adapter and the mode by the names in its
config, plays a call's caller media into the mode, and records every callback and adapter
event with call time (:class:`~voice_server_moshi.host.recorder.Recorder`). Like a
turn-based host it sends ``commit_turn`` and ``create_response`` after each user turn; the
full-duplex mode ignores them. With a steerable adapter it can also make the agent say
scripted lines (``says``) or what its tools found (``on_caller_turn_end``; see
:mod:`.tool_example`).

Pacing (``clock``):

* ``"realtime"``: media is pushed at ``speed`` times real time (1.0: a live call) and the
  mode runs its own clock; what a telephony host does;
* ``"virtual"``: the host ticks the mode itself, one frame at a time, waiting after each
  until the model has answered the media sent so far; as fast as the model allows, and
  deterministic with a scripted agent (tests, benchmarks, slow CPUs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .._log import get_logger
from ..adapter import BaseAdapter, VoiceModelAdapter, VoiceModelConfig
from ..errors import SteeringUnsupportedError
from ..modes.clock import ManualClock, RealClock
from ..modes.jitter import CallerJitterBuffer
from ..modes.overlap import OverlapDecision
from ..registry import Registry, load_registry
from .config import HostConfig
from .impair import Delivery, Impairment
from .recorder import Record, Recorder

ClockKind = Literal["realtime", "virtual"]
#: ``(mode, caller_words)`` at the end of each caller turn (the host's LLM and tools).
TurnHook = Callable[[Any, list[str]], None]
Progress = Callable[[float, float, "CallState"], None]


@dataclass(slots=True)
class CallState:
    """What the progress display shows."""

    user_turns: int = 0
    agent_turns: int = 0
    barge_ins: int = 0
    backchannels: int = 0
    user_speaking: bool = False
    agent_speaking: bool = False


@dataclass(slots=True)
class CallResult:
    call_id: str
    records: list[Record]
    caller_audio: bytes = field(repr=False)
    agent_audio: bytes = field(repr=False)
    overlaps: list[OverlapDecision]
    mode_stats: dict[str, Any]
    adapter_counters: dict[str, int]
    wall_s: float
    call_ms: float
    settle_timeouts: int = 0
    response_wall_ms: list[float] = field(default_factory=list)
    arrival_ms: list[float] = field(default_factory=list)
    #: Call time -> the caller's media time (the caller path's delay taken out), where the
    #: mode knows it (the full-duplex mode's jitter buffer); for scoring against labels.
    to_caller_media: Callable[[float], float] | None = None

    def timeline(self) -> list[dict[str, Any]]:
        """The records as JSON, in call-time order (``t_ms``; stable, so records of the
        same instant keep the order they happened in). A record's ``decided_ms`` says when
        the mode knew, which for a turn end or a barge-in is later than its ``t_ms``."""
        return [r.to_json() for r in sorted(self.records, key=lambda r: r.t_ms)]


class ReferenceHost:
    """One host; :meth:`run_call` runs one call through the configured adapter and mode."""

    def __init__(
        self,
        config: HostConfig | None = None,
        *,
        registry: Registry | None = None,
        adapter_factory: Callable[[], VoiceModelAdapter] | None = None,
    ) -> None:
        self.config = config or HostConfig()
        self.registry = registry or load_registry()
        self._adapter_factory = adapter_factory
        self.log = get_logger("voice_server_moshi.host")

    def make_adapter(self) -> VoiceModelAdapter:
        """The configured adapter, or the injected factory's (tests plug a scripted agent)."""
        if self._adapter_factory is not None:
            return self._adapter_factory()
        return self.registry.create_adapter(self.config.adapter, self.config.adapter_settings)

    async def run_call(
        self,
        caller_audio: bytes,
        *,
        clock: ClockKind = "realtime",
        speed: float = 1.0,
        tail_ms: float = 1500.0,
        call_id: str | None = None,
        progress: Progress | None = None,
        settle_max_lag_ms: float = 160.0,
        settle_timeout_s: float = 10.0,
        record_audio_frames: bool = False,
        says: Sequence[tuple[float, str]] = (),
        on_caller_turn_end: TurnHook | None = None,
        impair: Impairment | None = None,
    ) -> CallResult:
        """Play ``caller_audio`` (the call's format) then ``tail_ms`` of silence; hang up.

        ``says``: (call ms, text) pairs; at each time the host asks the mode to have the agent
        say the text (``create_response(text=...)``, needs a steerable adapter).
        ``on_caller_turn_end(mode, caller_words)``: called when a caller turn ends, with the
        caller's transcript so far, e.g. the host's LLM deciding on a tool call
        (:mod:`.tool_example`). ``impair``: a bad line between the caller and the host
        (:mod:`.impair`); each caller frame is pushed with its media time, as a telephony
        host does with RTP, at the time the line delivers it."""
        fmt = self.config.audio
        if len(caller_audio) % fmt.bytes_per_sample:
            raise ValueError(f"caller audio is not whole {fmt.encoding} samples")
        cfg = VoiceModelConfig(audio=fmt) if call_id is None else VoiceModelConfig(call_id, fmt)
        log = self.log.bind(call_id=cfg.call_id)
        adapter = self.make_adapter()
        mode_clock = ManualClock() if clock == "virtual" else RealClock(speed)
        state = CallState()
        holder: dict[str, Any] = {}
        recorder = Recorder(lambda: float(holder["mode"].t_ms) if "mode" in holder else 0.0,
                            record_audio_frames)
        tracking = _StateTracker(recorder, state)
        mode = self.registry.create_mode(
            self.config.mode, self.config.mode_settings,
            adapter=adapter, host=tracking, config=cfg, clock=mode_clock,
        )
        holder["mode"] = mode
        # A turn-based host asks for a reply after each caller turn: harmless here.
        def turn_based_requests() -> None:
            mode.commit_turn()
            mode.create_response()

        recorder.on_turn_end_hooks.append(turn_based_requests)
        if on_caller_turn_end is not None:
            hook = on_caller_turn_end
            recorder.on_turn_end_hooks.append(lambda: hook(mode, recorder.caller_words()))
        pending_says = sorted(says)

        def due_says() -> None:
            while pending_says and pending_says[0][0] <= mode.t_ms:
                at_ms, text = pending_says.pop(0)
                recorder.say_request(mode.t_ms, text, at_ms)
                try:
                    mode.create_response(text=text)
                except SteeringUnsupportedError as exc:
                    recorder.on_error("steering_unsupported", str(exc), False)
                    log.warning("say_not_possible", error=str(exc))
        adapter.on("*", recorder.on_event)
        # Whole frames (packets); a partial last frame was never sent, as before.
        frames = [caller_audio[i : i + fmt.bytes_per_frame]
                  for i in range(0, len(caller_audio) - fmt.bytes_per_frame + 1,
                                 fmt.bytes_per_frame)]
        fm = float(fmt.frame_ms)
        line = (impair.schedule(len(frames), fm) if impair is not None
                else [Delivery(k * fm, k) for k in range(len(frames))])
        n_tail = int(tail_ms // fmt.frame_ms)
        total_ms = (len(frames) + n_tail) * fmt.frame_ms
        wall0 = time.perf_counter()
        timeouts = 0
        await mode.start()
        log.info("call_started", frames=len(frames), clock=clock, speed=speed)
        try:
            if clock == "virtual":
                j = 0
                for k in range(len(frames) + n_tail):
                    if mode.ended:
                        break
                    # What the line delivered by half a frame before this tick (as below).
                    while j < len(line) and line[j].arrival_ms <= (k + 0.5) * fm:
                        mode.push_caller_audio(frames[line[j].frame], line[j].frame * fm)
                        j += 1
                    due_says()
                    await mode.tick()
                    if not await mode.settle(settle_max_lag_ms, settle_timeout_s):
                        timeouts += 1
                    if progress is not None and k % 10 == 0:
                        progress(mode.t_ms, total_ms, state)
            else:
                period = fm / 1000.0
                for j, d in enumerate(line):
                    if mode.ended:
                        break
                    # Half a frame ahead of the mode's tick: robust to scheduling jitter.
                    await mode_clock.sleep_until((d.arrival_ms + 0.5 * fm) / 1000.0)
                    mode.push_caller_audio(frames[d.frame], d.frame * fm)
                    due_says()
                    if progress is not None and j % 10 == 0:
                        progress(mode.t_ms, total_ms, state)
                end = (len(frames) + n_tail) * period
                while not mode.ended and mode_clock.now() < end:
                    await asyncio.sleep(min(0.1, period * 5 / speed))
                    due_says()
                    if progress is not None:
                        progress(mode.t_ms, total_ms, state)
        finally:
            await mode.stop()
        if progress is not None:
            progress(mode.t_ms, total_ms, state)
        counters = dict(adapter.counters) if isinstance(adapter, BaseAdapter) else {}
        log.info("call_ended", call_ms=mode.t_ms, settle_timeouts=timeouts)
        return CallResult(
            cfg.call_id, recorder.records, bytes(caller_audio), bytes(recorder.agent_audio),
            mode.overlaps, mode.stats(), counters, time.perf_counter() - wall0, mode.t_ms,
            timeouts, list(mode.response_wall_ms), list(mode.arrival_ms),
            jitter.media_ms if isinstance(jitter := getattr(mode, "jitter", None),
                                          CallerJitterBuffer) else None,
        )


class _StateTracker:
    """Forwards the callbacks to the recorder and keeps the progress counters."""

    def __init__(self, recorder: Recorder, state: CallState) -> None:
        self.r = recorder
        self.s = state

    def on_user_turn_started(self, t_ms: float, barge_in: bool) -> None:
        self.s.user_turns += 1
        self.s.barge_ins += int(barge_in)
        self.s.user_speaking = True
        self.r.on_user_turn_started(t_ms, barge_in)

    def on_user_turn_ended(self, t_ms: float) -> None:
        self.s.user_speaking = False
        self.r.on_user_turn_ended(t_ms)

    def on_agent_audio(self, audio: bytes, t_ms: float) -> None:
        self.r.on_agent_audio(audio, t_ms)

    def on_agent_turn_started(self, t_ms: float, steered: bool = False) -> None:
        self.s.agent_turns += 1
        self.s.agent_speaking = True
        self.r.on_agent_turn_started(t_ms, steered)

    def on_agent_steering(self, request_id: str, status: str, t_ms: float) -> None:
        self.r.on_agent_steering(request_id, status, t_ms)

    def on_agent_turn_ended(self, t_ms: float, interrupted: bool) -> None:
        self.s.agent_speaking = False
        self.r.on_agent_turn_ended(t_ms, interrupted)

    def on_transcript(self, role: Any, text: str, final: bool, t_ms: float) -> None:
        self.r.on_transcript(role, text, final, t_ms)

    def on_error(self, code: str, message: str, fatal: bool) -> None:
        self.r.on_error(code, message, fatal)

    def on_disconnected(self, reason: str, t_ms: float) -> None:
        self.r.on_disconnected(reason, t_ms)

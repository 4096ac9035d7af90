"""The full-duplex orchestration mode: a continuous-stream model behind turn callbacks.

Created by the host through the registry::

    mode = registry.create_mode(
        "full-duplex", settings,            # mapping or FullDuplexSettings
        adapter=adapter,                    # a VoiceModelAdapter, not yet connected
        host=callbacks,                     # a HostCallbacks
        config=VoiceModelConfig(...),       # optional: call id and audio format
        clock=RealClock(),                  # optional: RealClock(speed) or ManualClock()
    )
    await mode.start()                      # connects the adapter, starts the call clock
    mode.push_caller_audio(frame)           # caller media as it arrives (any whole samples)
    ...
    await mode.stop()                       # ends the call; on_disconnected comes last

Every frame period the mode sends one caller frame to the adapter out of the caller
jitter buffer (:mod:`.jitter`: late frames used, missing ones concealed; Moshi is clocked by
its input and stalls without it) and plays one agent frame out of the
playout buffer to the host (silence while the buffer is dry). Caller turns come from the
adapter's ``speech-started``/``speech-ended``; agent turns from the played agent audio and
Moshi's text (:mod:`.agent_activity`); overlaps are classified in :mod:`.overlap`.

Turn-based requests: :meth:`commit_turn`, and :meth:`create_response` without text or
audio, are accepted and do nothing (Moshi decides by itself when to speak and when to
yield). With an adapter that can be steered (``capabilities.steering``, ADR 0070),
``create_response(text=...)`` makes the agent say that text, ``create_response(audio=...,
text=...)`` makes it say that audio, and :meth:`cancel_response` stops it; agent turns that
carry steered speech are marked (see :mod:`.steering_marks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .._log import get_logger
from ..adapter import VoiceModelAdapter, VoiceModelConfig
from ..audio import g711
from ..errors import LifecycleError
from ..events import (
    AudioChunk,
    Connected,
    Disconnected,
    Error,
    Event,
    Interruption,
    SpeechEnded,
    SpeechStarted,
    Steering,
    Transcript,
)
from .agent_activity import AgentActivity, AgentTransition
from .callbacks import HostCallbacks
from .clock import Clock, ManualClock, RealClock
from .jitter import CallerJitterBuffer
from .levels import frame_level_dbfs, pcm_level_dbfs, silence_frame
from .overlap import CallerTurns, OverlapDecision, TurnAction
from .playout import PlayoutBuffer
from .settings import FullDuplexSettings
from .steering_marks import SteeringMarks

__all__ = ["RECENT_FRAMES", "FullDuplexMode", "HostCallbacks"]

#: Per-frame measurements kept per call: the last minute of 20 ms frames.
RECENT_FRAMES = 3000


class FullDuplexMode:
    """One call in full-duplex mode. See the module docstring for the host's side."""

    mode_name = "full-duplex"

    def __init__(
        self,
        settings: FullDuplexSettings | None = None,
        *,
        adapter: VoiceModelAdapter,
        host: HostCallbacks,
        config: VoiceModelConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(host, HostCallbacks):
            raise TypeError(
                f"host must implement HostCallbacks (on_user_turn_started, ...), got "
                f"{type(host).__name__}"
            )
        self.settings = settings or FullDuplexSettings()
        self.adapter = adapter
        self.host = host
        self.config = config or VoiceModelConfig()
        self.clock: Clock = clock if clock is not None else RealClock()
        fmt = self.config.audio
        self.frame_ms = float(fmt.frame_ms)
        self._frame_bytes = fmt.bytes_per_frame
        s = self.settings
        self.playout = PlayoutBuffer(
            prebuffer_frames=-(-s.playout_prebuffer_ms // fmt.frame_ms),
            max_frames=max(1, s.playout_max_ms // fmt.frame_ms),
            silence=silence_frame(fmt.encoding, fmt.samples_per_frame))
        self.agent = AgentActivity(s, self.frame_ms)
        self.callers = CallerTurns(s, self.agent)
        self.log = get_logger("voice_server_moshi.modes.full_duplex", call_id=self.config.call_id)
        self.jitter = CallerJitterBuffer(
            frame_ms=self.frame_ms, encoding=fmt.encoding, sample_rate=fmt.sample_rate,
            min_ms=s.jitter_min_ms, max_ms=s.caller_queue_max_ms,
        )
        self._caller_partial = b""
        self.t_ms = 0.0  # call time of the next tick
        self.caller_sent_ms = 0.0
        self.agent_received_ms = 0.0
        self.counters: dict[str, int] = {
            "caller_frames": 0, "gap_fill_frames": 0, "concealed_frames": 0,
            "caller_dropped_frames": 0,
            "agent_chunks": 0, "ignored_requests": 0, "backchannels": 0, "barge_ins": 0,
            "playout_flushes": 0, "steer_requests": 0,
        }
        self.steering = SteeringMarks(
            host, on_error=lambda msg: self._call(host.on_error, "steering_failed", msg, False))
        self._ducking = False
        self._started = False
        self._ended = False
        self._ended_evt = asyncio.Event()
        self._audio_evt = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()
        # (caller ms sent, wall time) per tick: how long the model takes to answer media.
        # Bounded: a model that stops answering must not grow it for the rest of the call.
        self._sent_walls: deque[tuple[float, float]] = deque(maxlen=RECENT_FRAMES)
        #: Wall ms from sending caller media to receiving the agent audio for the same
        #: stream position (transport + engine step + the adapter's framing slack); the
        #: most recent RECENT_FRAMES, so a one-hour call holds what a one-minute call does.
        self.response_wall_ms: deque[float] = deque(maxlen=RECENT_FRAMES)
        #: Call time (ms) at which each recent agent frame arrived: replayed through
        #: :func:`~.playout.simulate` to size the playout buffer (ADR 0042).
        self.arrival_ms: deque[float] = deque(maxlen=RECENT_FRAMES)

    # -- host -> mode ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the adapter and start the call clock (unless it is a ManualClock)."""
        if self._started:
            raise LifecycleError("full-duplex: start() called twice; one mode serves one call")
        self._started = True
        # A real clock keeps caller media continuous here (ADR 0140); a virtual host waits
        # on the model, so the adapter's stall fill keeps that model's input flowing.
        real = not isinstance(self.clock, ManualClock)
        cfg = dataclasses.replace(self.config, media_clock="host") if real else self.config
        await self.adapter.connect(cfg)
        self._consumer = asyncio.get_running_loop().create_task(
            self._consume(), name="full-duplex:events"
        )
        self.clock.start()
        if real:
            self._ticker = asyncio.create_task(self._run_clock(), name="full-duplex:clock")
        self.log.info("mode_started", frame_ms=self.frame_ms, settings=str(self.settings))

    def push_caller_audio(self, chunk: bytes, media_ms: float | None = None) -> None:
        """Caller media as it arrives, played on the call's clock through the jitter buffer
        (:mod:`.jitter`): any whole samples in order, or with ``media_ms`` (the packet's
        RTP time in ms from the stream's start) whole frames placed by that time, so late,
        lost, reordered and duplicated packets are told apart."""
        if self._ended:
            return
        fmt = self.config.audio
        if len(chunk) % fmt.bytes_per_sample:
            raise ValueError(
                f"caller chunk of {len(chunk)} bytes is not whole {fmt.encoding} samples"
            )
        now_ms = self.clock.now() * 1000.0
        if media_ms is not None:
            if len(chunk) % self._frame_bytes:
                raise ValueError(
                    f"a timestamped caller chunk must be whole {fmt.frame_ms} ms frames "
                    f"({self._frame_bytes} bytes each), got {len(chunk)} bytes"
                )
            for k, i in enumerate(range(0, len(chunk), self._frame_bytes)):
                self.jitter.push(bytes(chunk[i : i + self._frame_bytes]), now_ms,
                                 media_ms + k * self.frame_ms)
            return
        data = self._caller_partial + bytes(chunk)
        n = len(data) // self._frame_bytes * self._frame_bytes
        for i in range(0, n, self._frame_bytes):
            self.jitter.push(data[i : i + self._frame_bytes], now_ms)
        self._caller_partial = data[n:]

    async def tick(self) -> None:
        """One frame period: send a caller frame, play an agent frame, update turns."""
        async with self._tick_lock:
            if self._ended:
                return
            t = self.t_ms
            frame, kind = self.jitter.pop()
            js, c = self.jitter.stats, self.counters
            c["caller_frames"], c["gap_fill_frames"] = js.media_frames, js.gap_fill_frames
            c["concealed_frames"], c["caller_dropped_frames"] = (js.concealed_frames,
                                                                  js.overflow_dropped)
            if kind != "wait":  # the caller's stream starts with the caller's first frame
                self.callers.caller_level(frame_level_dbfs(frame, self.config.audio.encoding),
                                          t)
                try:
                    await self.adapter.send_audio(frame)
                except LifecycleError:
                    return  # the session ended under us; _consume reports it
                self.caller_sent_ms += self.frame_ms
                self._sent_walls.append((self.caller_sent_ms, time.perf_counter()))
            out, from_agent = self.playout.pop()
            pcm = g711.decode(out, self.config.audio.encoding)
            if self._ducking:
                gain = 10 ** (-self.settings.duck_db / 20)
                pcm = np.clip(pcm * gain, -32768, 32767).astype(np.int16)
                out = g711.encode(pcm, self.config.audio.encoding)
            self._call(self.host.on_agent_audio, out, t)
            self._agent_transitions(self.agent.process(pcm_level_dbfs(pcm), t, from_agent))
            self.t_ms = t + self.frame_ms
            if isinstance(self.clock, ManualClock):
                self.clock.advance(self.frame_ms / 1000.0)
            self._turn_actions(self.callers.tick(self.t_ms))

    async def settle(self, max_lag_ms: float = 160.0, timeout_s: float = 10.0) -> bool:
        """For ManualClock hosts: wait until the agent audio received is within
        ``max_lag_ms`` of the caller audio sent (Moshi answers each 80 ms frame with one;
        framing and resampling take up to ~82 ms, a model that skips its first frame 80
        more), so virtual time stays honest whatever the model's speed. False on timeout."""
        for _ in range(4):
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.agent_received_ms < self.caller_sent_ms - max_lag_ms and not self._ended:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._audio_evt.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._audio_evt.wait(), remaining)
        return True

    async def stop(self, reason: str = "host") -> None:
        """End the call: disconnect the adapter; ``on_disconnected`` is the last callback."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._started:
            with contextlib.suppress(Exception):
                await self.adapter.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended_evt.wait(), 5.0)
        self._finish(reason)
        if self._consumer is not None and not self._consumer.done():
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer

    async def wait_ended(self) -> None:
        await self._ended_evt.wait()

    @property
    def ended(self) -> bool:
        return self._ended

    # Turn-based requests: no-ops without text/audio, steering with them (ADR 0070).

    def create_response(self, *, text: str | None = None, audio: bytes | None = None,
                        sample_rate: int = 24000, **request: Any
                        ) -> asyncio.Task[str] | None:
        """The host asks for a reply. With ``text`` the agent says that text in its own
        voice; with ``audio`` (16-bit LE mono PCM at ``sample_rate``, e.g. the host's TTS)
        and its ``text`` it says exactly that audio. Returns a task whose result is the
        request id (``steering`` events and the agent-turn marks refer to it); without
        text or audio, Moshi replies when it decides to and this returns None.

        Raises :class:`~voice_server_moshi.errors.SteeringUnsupportedError` at once when
        the adapter cannot be steered, and ``ValueError`` for empty text without audio."""
        if text is None and audio is None:
            self._ignored("create_response", request)
            return None
        task = self.steering.say(self.adapter, text, audio, sample_rate)
        self.counters["steer_requests"] += 1
        return task

    def commit_turn(self, **request: Any) -> None:
        """The host commits the caller's turn: Moshi needs no commit. Does nothing."""
        self._ignored("commit_turn", request)

    def cancel_response(self, *, flush_playout: bool = True, **request: Any
                        ) -> asyncio.Task[str] | None:
        """The host cancels the reply. With a steerable adapter: the steered speech stops at
        the model's next step, queued requests are dropped and (``flush_playout``) the
        agent audio already buffered for the caller is dropped too. Otherwise a no-op:
        Moshi yields by itself when talked over (barge_in_policy duck/flush)."""
        adapter = self.adapter
        if not self.steering.can_steer(adapter):
            self._ignored("cancel_response", request)
            return None
        if flush_playout:
            self.counters["playout_flushes"] += 1
            self.playout.flush()
        return self.steering.cancel(adapter)

    @property
    def overlaps(self) -> list[OverlapDecision]:
        """Every caller-over-agent overlap and its verdict (backchannel, barge-in, turn)."""
        return list(self.callers.overlaps)

    def stats(self) -> dict[str, Any]:
        p = self.playout.stats
        return {
            **self.counters,
            "call_ms": self.t_ms,
            "caller_media": self.jitter.stats.as_dict(self.frame_ms),
            "playout": {
                "prebuffer_ms": self.playout.prebuffer * self.frame_ms,
                "mean_depth_ms": p.mean_depth_frames * self.frame_ms,
                "max_depth_ms": p.max_depth_frames * self.frame_ms, "underruns": p.underruns,
                "dropped_overflow_frames": p.dropped_overflow, "flushed_frames": p.flushed,
            },
        }

    # -- internals ---------------------------------------------------------------------

    def _ignored(self, name: str, request: dict[str, Any]) -> None:
        self.counters["ignored_requests"] += 1
        self.log.debug("turn_request_ignored", request=name, detail=sorted(request),
                       why="full-duplex: Moshi takes and yields turns by itself")

    async def _run_clock(self) -> None:
        period = self.frame_ms / 1000.0
        k = 1
        while not self._ended:
            # First tick one frame in: a frame of caller media takes a frame period to come.
            await self.clock.sleep_until(k * period)
            await asyncio.sleep(0)  # after a stalled loop, let the host push what is due first
            await self.tick()
            k += 1

    async def _consume(self) -> None:
        try:
            async for event in self.adapter.events():
                self._on_event(event)
                if isinstance(event, Disconnected):
                    break
        except Exception as exc:  # the adapter's iterator broke: report, end the call
            self.log.exception("adapter_events_failed")
            self._call(self.host.on_error, "internal", f"adapter events failed: {exc!r}", True)
        finally:
            self._finish("adapter-closed")

    def _on_event(self, event: Event) -> None:
        now = self.t_ms
        if isinstance(event, AudioChunk):
            self.counters["agent_chunks"] += 1
            self.agent_received_ms += event.duration_ms
            self.arrival_ms.append(self.clock.now() * 1000.0)
            self._note_response()
            self.playout.push(event.audio)
            self._audio_evt.set()
        elif isinstance(event, SpeechStarted):  # stream time -> call time: see .jitter
            self._turn_actions(self.callers.speech_started(self.jitter.call_ms(event.t_ms), now))
        elif isinstance(event, SpeechEnded):
            self._turn_actions(self.callers.speech_ended(self.jitter.call_ms(event.t_ms), now))
        elif isinstance(event, Transcript):
            if event.role == "agent":
                self.agent.note_text(event.text, now)
            self._call(self.host.on_transcript, event.role, event.text, event.final, now)
        elif isinstance(event, Interruption):
            n = self.playout.flush()
            self.log.info("provider_interruption", flushed_frames=n)
        elif isinstance(event, Steering):
            self.steering.on_event(event, now)
            if self.steering.notify is not None:
                self._call(self.steering.notify, event.request_id, event.status, now)
        elif isinstance(event, Error):
            self._call(self.host.on_error, event.code, event.message, event.fatal)
        elif isinstance(event, Connected):
            self.log.debug("adapter_connected", session_id=event.session_id)
        elif isinstance(event, Disconnected):
            self._finish(event.reason)

    def _note_response(self) -> None:
        walls = self._sent_walls
        # Drop ticks the agent audio has passed; the first left covers this position.
        while len(walls) > 1 and walls[1][0] <= self.agent_received_ms:
            walls.popleft()
        if walls and walls[0][0] <= self.agent_received_ms:
            self.response_wall_ms.append(1000.0 * (time.perf_counter() - walls[0][1]))
            walls.popleft()

    def _agent_transitions(self, transitions: list[AgentTransition]) -> None:
        for tr in transitions:
            if tr.kind == "start":
                steered = {"steered": True} if self.steering.mark_turn(tr.t_ms) else {}
                self._call(self.host.on_agent_turn_started, tr.t_ms, **steered)
            else:
                # Interrupted: the caller was talking (pending overlap or turn) when the
                # agent stopped, i.e. Moshi yielded to them.
                interrupted = self.callers.state != "idle" and self.callers.onset_ms < tr.t_ms
                self._call(self.host.on_agent_turn_ended, tr.t_ms, interrupted)

    def _turn_actions(self, actions: list[TurnAction]) -> None:
        for a in actions:
            if a.kind == "started":
                if a.barge_in:
                    self.counters["barge_ins"] += 1
                    self.apply_barge_in_policy()
                self._call(self.host.on_user_turn_started, a.t_ms, a.barge_in)
            else:
                self._ducking = False
                self._call(self.host.on_user_turn_ended, a.t_ms)
        self.counters["backchannels"] = self.callers.verdicts["backchannel"]

    def apply_barge_in_policy(self) -> None:
        """What a barge-in does to the playout; public for hosts that interrupt the agent."""
        policy = self.settings.barge_in_policy
        if policy == "flush":
            n = self.playout.flush()
            self.counters["playout_flushes"] += 1
            self.log.info("barge_in_flush", flushed_frames=n)
        elif policy == "duck":
            self._ducking = True

    def _finish(self, reason: str) -> None:
        if self._ended:
            return
        # Close open turns first so the host sees them end before the call does.
        self._agent_transitions(self.agent.close(self.t_ms))
        self._turn_actions(self.callers.close(self.t_ms))
        self._call(self.host.on_disconnected, reason, self.t_ms)
        self._ended = True
        self._ended_evt.set()
        self._audio_evt.set()
        self.log.info("mode_ended", reason=reason, **{
            k: v for k, v in self.counters.items() if isinstance(v, int)
        })

    def _call(self, fn: Callable[..., None], *args: object, **kwargs: object) -> None:
        """Call one of the host's callbacks; one that raises is logged, the call goes on."""
        if self._ended:
            return  # nothing after on_disconnected
        try:
            fn(*args, **kwargs)
        except Exception:
            self.log.exception("host_callback_failed", callback=fn.__name__)

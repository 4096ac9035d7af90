"""One call's row in the engine's batch (:class:`Slot`) and what the engine hands it.

Input clocking (ADR 0032): a slot with a queued frame steps with it. A slot with none is
idled (its state does not advance, exactly as if the tick had not happened), so network
jitter neither invents audio nor shifts the call; after ``fill_after_ticks`` starved ticks
in a row the engine feeds silence instead (an *underrun*) to keep Moshi's clock going for a
client that stopped sending. A queue over ``queue_frames`` drops its oldest frame (an
*overrun*), which bounds latency and memory. A standing backlog (the queue more than one
frame above ``target_frames`` at every tick for ``trim_window_ticks``, what a stall leaves
behind) is *trimmed* back to one over the target, oldest first, so latency recovers
(ADR 0065).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .._log import get_logger
from .call_sampling import CallSampling
from .config import FRAME_SAMPLES, EngineConfig
from .steering import SlotSteering, SteerEvent, SteeringSpec

#: A backlog standing one frame over the target is not trimmed: it is what a real-time
#: caller whose frames land near the tick is left with after one frame misses its tick
#: (the row idles, the next tick finds two). Trimming it dropped 80 ms of the caller's
#: audio every second or so and won nothing back (the next late frame undoes it); a stall
#: leaves more, and that is trimmed down to one over the target (ADR 0065, update).
JITTER_SLACK_FRAMES = 1

if TYPE_CHECKING:
    from .persona_run import PromptRun

log = get_logger("voice_server_moshi.engine.core")

PCM = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class SlotOutput:
    """One 80 ms frame of agent output for one call."""

    #: 0-based index of this output frame in the call.
    step: int
    pcm: PCM = field(repr=False)
    text_token: int
    #: The text piece as Kyutai's server would send it; None for PAD/EPAD.
    text: str | None
    #: The agent's Mimi codes of this frame (one per codebook).
    audio_tokens: tuple[int, ...] = ()
    #: Id of the steering request whose forcing made this frame, if any (ADR 0070).
    steered_by: str | None = None
    #: Steering progress (started/finished/cancelled) as of this frame.
    steering: tuple[SteerEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class SlotError:
    """The engine failed this call (it is closed); ``message`` says why."""

    message: str


@dataclass(frozen=True, slots=True)
class SttOutput:
    """One step of the caller's transcript (an engine with an STT, :mod:`.stt`): a text
    piece, or None for PAD/EPAD, at the call's frame ``step`` (0 = its first).

    The piece transcribes audio about ``delay_ms`` earlier: ``audio_ms`` is Kyutai's word
    timestamp. ``final`` marks the end of the call's flush: nothing follows it.
    """

    step: int
    text: str | None
    token: int
    #: P(turn ended) from the end-of-turn head; None when the checkpoint has no such head.
    end_of_turn: float | None = None
    delay_ms: float = 0.0
    final: bool = False

    @property
    def stream_ms(self) -> float:
        """Caller stream time at which this piece came out (end of frame ``step``)."""
        return (self.step + 1) * 80.0

    @property
    def audio_ms(self) -> float:
        """Estimated caller stream time of the audio this piece transcribes."""
        return max(0.0, self.step * 80.0 - self.delay_ms)


SlotEvent = SlotOutput | SlotError | SttOutput
Sink = Callable[[SlotEvent], None]

SlotState = Literal["waiting", "running", "closed"]


class SlotTable(Protocol):
    """What a slot needs of the engine that admitted it (the engine's
    :class:`~.admission.SlotAdmission`): its limits, the lock over every slot's queue and
    the totals, a way to wake the tick thread, and to give the row back. The ``count_*``
    methods add to the engine's totals and are called with ``lock`` held."""

    config: EngineConfig
    steering_spec: SteeringSpec

    @property
    def lock(self) -> threading.Lock: ...

    def wake(self) -> None: ...

    def count_overrun(self) -> None: ...

    def count_underrun(self) -> None: ...

    def count_trimmed(self, frames: int) -> None: ...

    def release(self, slot: Slot) -> None: ...


class Slot:
    """One call's row in the batch. ``push`` is thread-safe; outputs go to ``sink``, which
    is called from the engine's tick thread and must be quick and must not block."""

    def __init__(self, engine: SlotTable, index: int, call_id: str, sink: Sink) -> None:
        self.engine = engine
        self.index = index
        self.call_id = call_id
        self.sink = sink
        self.state: SlotState = "waiting"
        self.opened_at = time.monotonic()
        self._queue: deque[PCM] = deque()
        self._starved = 0
        self._first = True
        #: The call's sampling, seeds drawn (set at admission; applied when it joins).
        self.sampling: CallSampling | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.underruns = 0
        self.overruns = 0
        self.idle_ticks = 0
        #: Say-text / say-audio / cancel for this call (engine/steering.py).
        self.steering = SlotSteering(engine.steering_spec)
        #: Frames dropped to bring a standing backlog back to the target depth.
        self.trimmed = 0
        #: Queue depth before each of the last ticks (the trim window).
        self._depths: deque[int] = deque(maxlen=engine.config.trim_window_ticks or 1)
        #: Ticks this slot has run, and the one at which its sender last waited for room
        #: (a paced sender is ahead of real time: its backlog is wanted, not stale).
        self._ticks = 0
        self.paced_at = -(1 << 30)
        #: The call's persona prompt (ADR 0130), None without one; ``prompted`` once it is
        #: in the row (its first frame then continues the row instead of resetting it).
        self.prompt_run: PromptRun | None = None
        self.prompted = False
        self.log = log.bind(call_id=call_id, slot=index)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def push(self, pcm: PCM) -> None:
        """Queue one caller frame: ``FRAME_SAMPLES`` float32 samples at 24 kHz in [-1, 1].

        NaN/inf become 0 and samples are clipped, so a bad frame cannot poison the row.
        """
        arr = np.asarray(pcm)
        if arr.shape != (FRAME_SAMPLES,):
            raise ValueError(
                f"a frame is {FRAME_SAMPLES} samples of 24 kHz mono, got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"frame samples must be float in [-1, 1], got dtype {arr.dtype}")
        frame = np.clip(np.nan_to_num(arr.astype(np.float32, copy=True), nan=0.0,
                                      posinf=1.0, neginf=-1.0), -1.0, 1.0)
        with self.engine.lock:
            if self.closed:
                raise RuntimeError(f"slot {self.index} of call {self.call_id} is closed")
            self._queue.append(frame)
            self.frames_in += 1
            if len(self._queue) > self.engine.config.queue_frames:
                self._queue.popleft()
                self.overruns += 1
                self.engine.count_overrun()
        self.engine.wake()

    @property
    def queued(self) -> int:
        """Frames waiting for a tick."""
        with self.engine.lock:
            return len(self._queue)

    def close(self) -> None:
        """Leave the batch; idempotent."""
        self.engine.release(self)

    def sender_waits(self) -> None:
        """The sender is waiting for room (it is ahead of real time): no trimming now."""
        self.paced_at = self._ticks

    def _trim(self) -> None:
        """Drop a standing backlog down to ``target_frames``; engine lock held."""
        cfg = self.engine.config
        window = cfg.trim_window_ticks
        self._ticks += 1
        if window is None or self.state != "running":
            return
        self._depths.append(len(self._queue))
        if len(self._depths) < window or self._ticks - self.paced_at <= window:
            return
        excess = min(self._depths) - (cfg.target_frames + JITTER_SLACK_FRAMES)
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self.trimmed += excess
            self.engine.count_trimmed(excess)
            self._depths.clear()

    def _take(self) -> tuple[PCM | None, bool]:
        """(frame or None, filled) for this tick; called with the engine lock held."""
        self._trim()
        if self._queue:
            self._starved = 0
            if self.state == "waiting":
                self.state = "running"
            return self._queue.popleft(), False
        if self.state == "waiting":
            return None, False  # not started: a call's timeline starts at its first frame
        self._starved += 1
        fill = self.engine.config.fill_after_ticks
        if fill is not None and self._starved > fill:
            self.underruns += 1
            self.engine.count_underrun()
            return np.zeros(FRAME_SAMPLES, dtype=np.float32), True
        self.idle_ticks += 1
        return None, False

"""Agent playout buffer on the call's clock.

Moshi's audio arrives in bursts, one 80 ms frame per engine step (four 20 ms telephony
frames at once), with the jitter of the transport and of the engine's tick. The host sends
one frame per frame period. The buffer releases one frame per tick. When audio arrives in
an empty buffer (at the start, and after an underrun) it is held ``prebuffer`` ticks before
playout starts, so the next burst may come that much late without a gap. The hold is in
time, not in queued frames: with 80 ms bursts a frame threshold could only choose between
one burst and two. It is kept as short as the measured jitter allows (ADR 0042): every
tick of hold is latency the caller hears.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class PlayoutStats:
    """Counters and a running summary of the depth: constant memory whatever the call's
    length (no per-tick history)."""

    frames_in: int = 0
    frames_out: int = 0
    underruns: int = 0
    silence_frames: int = 0
    dropped_overflow: int = 0
    flushed: int = 0
    depth_ticks: int = 0
    depth_sum: int = 0
    max_depth_frames: int = 0

    def note_depth(self, depth: int) -> None:
        self.depth_ticks += 1
        self.depth_sum += depth
        self.max_depth_frames = max(self.max_depth_frames, depth)

    @property
    def mean_depth_frames(self) -> float:
        return self.depth_sum / self.depth_ticks if self.depth_ticks else 0.0


class PlayoutBuffer:
    """FIFO of whole frames with a start hold and an upper bound."""

    def __init__(self, prebuffer_frames: int, max_frames: int, silence: bytes) -> None:
        if max_frames < 1 or prebuffer_frames < 0 or prebuffer_frames >= max_frames:
            raise ValueError(
                f"need 0 <= prebuffer ({prebuffer_frames}) < max ({max_frames}) frames"
            )
        self.prebuffer = prebuffer_frames
        self.max_frames = max_frames
        self.silence = silence
        self._frames: deque[bytes] = deque()
        self._playing = False
        self._held = 0  # ticks the first queued frame has waited
        self.stats = PlayoutStats()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: bytes) -> None:
        self.stats.frames_in += 1
        self._frames.append(frame)
        while len(self._frames) > self.max_frames:
            self._frames.popleft()
            self.stats.dropped_overflow += 1

    def pop(self) -> tuple[bytes, bool]:
        """The frame to play now and whether it is agent audio (False: filler silence)."""
        self.stats.note_depth(len(self._frames))
        if not self._playing and self._frames:
            if self._held >= self.prebuffer:
                self._playing = True
            else:
                self._held += 1
        if self._playing and self._frames:
            self.stats.frames_out += 1
            return self._frames.popleft(), True
        if self._playing:
            # Ran dry while playing: an underrun. Hold the next audio again.
            self._playing = False
            self._held = 0
            self.stats.underruns += 1
        self.stats.silence_frames += 1
        return self.silence, False

    def flush(self) -> int:
        n = len(self._frames)
        self._frames.clear()
        self.stats.flushed += n
        self._playing = False
        self._held = 0
        return n


def simulate(
    arrival_ms: list[float], frame_ms: float, prebuffer_ms: float, max_ms: float = 5000.0
) -> PlayoutStats:
    """Replay recorded agent-frame arrival times (call ms) through a buffer with
    ``prebuffer_ms``, ticking every ``frame_ms`` like the mode's clock: the underruns and
    depth that setting would have had on that call."""
    buf = PlayoutBuffer(
        int(-(-prebuffer_ms // frame_ms)), max(int(max_ms // frame_ms), 2), b""
    )
    times = sorted(arrival_ms)
    i = 0
    k = 1
    end = (times[-1] if times else 0.0) + 2 * frame_ms
    while k * frame_ms <= end:
        t = k * frame_ms
        while i < len(times) and times[i] <= t:
            buf.push(b"x")
            i += 1
        buf.pop()
        k += 1
    return buf.stats

"""The caller-side jitter buffer: caller frames placed by media time, played on the call's clock.

Phone media does not arrive on time (RTP through carriers: 20-60 ms of jitter, 1-3 % loss,
the odd reordered or duplicated packet; a busy host's own loop is late too). The mode
sends Moshi one caller frame per tick whatever happens (Moshi is clocked by its input), so
what it sends when the frame is not there decides whether a late word survives. The policy
(docs/adr/0140-caller-media-policy.md):

* Frames carry an index: ``media_ms / frame_ms`` when the host knows the media time (RTP
  timestamp, Twilio's ``timestamp``), else the next in arrival order.
* Each tick plays the frame at the play index. A frame that arrived late but before its
  turn is simply used: that is what the depth is for.
* The frame is missing at its turn:
  - later frames are already here: it is lost (or reordered past the depth): concealed
    (:class:`~voice_server_moshi.audio.plc.Concealer`, G.711 Appendix I) and skipped;
  - nothing later is here: the stream is late (jitter, a host stall): concealed and *held*,
    the play index waits for it, so the late frame is played when it comes and no caller
    audio is lost. Each hold adds a frame of delay: the buffer has grown by one frame.
  - Concealment fades out after 60 ms (the appendix). A hold that lasts longer pauses
    the caller's stream (``wait``: nothing is sent, so no VAD hears silence in the middle
    of a word) for as long as the line's recent jitter (``target``) says a late frame may
    still come; silence after that is a ``gap_fill`` (the caller's media has stopped, not
    jittered) and keeps Moshi's clock running. A line without jitter never pauses.
* Delay is won back only where it cannot be heard: when more frames are buffered than the
  jitter seen lately needs (``target``), one *quiet* frame is dropped per tick until it
  fits. Whatever the level, the buffer never holds more than ``max_ms``: beyond it the
  oldest frames go (what ``caller_queue_max_ms`` always did).
* A frame that arrives after its turn was played or skipped, or twice, is dropped and
  counted.
* Before the caller's first frame, up to ``max_ms`` of ticks are ``wait``: the mode sends
  Moshi nothing yet, so the caller's stream (and the caller VAD's clock) starts with the
  caller's media, not with silence the line's first jitter made (a VAD that heard digital
  silence first takes the line's noise for speech). After that wait, silence keeps Moshi's
  clock running for a caller who sends nothing.

The target is the spread of the frames' transit times over the last ``window_ms`` (how much
later than the earliest a frame can arrive), clamped to ``[min_ms, max_ms]``. Growth needs
no estimate (a late frame holds); the estimate only stops the buffer from shrinking below
what the line's jitter needs, so one late frame does not cause a hold, a shrink, another
hold, again and again.

Pure and I/O-free: times are the call clock's milliseconds, passed in.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..audio import g711
from ..audio.plc import Concealer
from .levels import pcm_level_dbfs

__all__ = ["CallerJitterBuffer", "JitterStats", "PlayKind"]

PlayKind = Literal["media", "concealed", "silence", "wait"]

#: A frame quieter than this may be dropped to win back delay (inaudible, and no VAD
#: calls it speech).
QUIET_DBFS = -50.0
#: How many recent frame indices are remembered to recognise a duplicate (10 s of 20 ms).
_SEEN = 500


@dataclass(slots=True)
class JitterStats:
    """What the buffer did, for ``mode.stats()`` and the call report."""

    media_frames: int = 0  #: real caller frames played
    concealed_frames: int = 0  #: frames made by concealment (lost or late)
    lost_frames: int = 0  #: frames skipped as lost (a later frame was already here)
    held_frames: int = 0  #: ticks the play index waited for a late frame
    late_dropped: int = 0  #: frames that came after their turn
    duplicates: int = 0  #: frames that came twice
    reordered: int = 0  #: frames that came after a later frame, in time to play
    shrunk_frames: int = 0  #: quiet frames dropped to win back delay
    overflow_dropped: int = 0  #: frames dropped because the buffer was full
    gap_fill_frames: int = 0  #: silence: no caller media, concealment over or not begun
    wait_frames: int = 0  #: ticks with nothing sent: before the first frame, in a long hold
    depth_sum_frames: int = 0
    depth_max_frames: int = 0
    ticks: int = 0
    target_frames: int = 0
    transit_spread_ms: float = 0.0

    def as_dict(self, frame_ms: float) -> dict[str, float | int]:
        mean = self.depth_sum_frames / self.ticks if self.ticks else 0.0
        return {
            "media_frames": self.media_frames, "concealed_frames": self.concealed_frames,
            "lost_frames": self.lost_frames, "held_frames": self.held_frames,
            "late_dropped": self.late_dropped, "duplicates": self.duplicates,
            "reordered": self.reordered, "shrunk_frames": self.shrunk_frames,
            "overflow_dropped": self.overflow_dropped,
            "gap_fill_frames": self.gap_fill_frames, "wait_frames": self.wait_frames,
            "mean_delay_ms": round(mean * frame_ms, 1),
            "max_delay_ms": self.depth_max_frames * frame_ms,
            "target_ms": self.target_frames * frame_ms,
            "transit_spread_ms": round(self.transit_spread_ms, 1),
        }


class CallerJitterBuffer:
    """One call's caller media: :meth:`push` as it arrives, :meth:`pop` once per tick."""

    def __init__(self, *, frame_ms: float, encoding: str, sample_rate: int,
                 min_ms: float = 0.0, max_ms: float = 200.0, window_ms: float = 3000.0,
                 conceal_ms: float = 60.0) -> None:
        if not 0 <= min_ms <= max_ms:
            raise ValueError(f"jitter buffer bounds must be 0 <= min <= max, got "
                             f"{min_ms} and {max_ms}")
        self.frame_ms = frame_ms
        self.encoding = encoding
        self.samples = round(sample_rate * frame_ms / 1000)
        self.min_frames = math.ceil(min_ms / frame_ms)
        self.max_frames = max(1, int(max_ms // frame_ms))
        self._window = max(1, int(window_ms // frame_ms))
        self._frames: dict[int, bytes] = {}
        self._play: int | None = None  # index of the next frame to play
        self._next_seq = 0  # index of a frame pushed without media time
        self._highest = -1
        self._held = 0  # ticks the current hold has lasted
        # (frames sent before, waits so far) at each pause: maps stream time to call time.
        self._sent = 0
        self._waited = 0
        self._wait_marks: deque[tuple[int, int]] = deque(maxlen=_SEEN)
        # (tick, tick - media index) whenever a played frame's delay changes.
        self._offsets: deque[tuple[int, int]] = deque(maxlen=_SEEN)
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._transits: deque[float] = deque(maxlen=self._window)
        self._plc = Concealer(sample_rate, conceal_ms)
        self._conceal_frames = math.ceil(conceal_ms / frame_ms)
        self._silence = g711.encode(np.zeros(self.samples, dtype=np.int16), encoding)
        self.stats = JitterStats(target_frames=self.min_frames)

    @property
    def depth(self) -> int:
        """Frames buffered from the play index on (the delay the buffer holds now)."""
        if self._play is None:
            return 0
        return sum(1 for i in self._frames if i >= self._play)

    def call_ms(self, stream_ms: float) -> float:
        """Call time (the mode's clock) of a point of the stream sent to the model (what
        the adapter's events are timed in): later by the ``wait`` ticks before it."""
        k = bisect.bisect_right(self._wait_marks, (stream_ms / self.frame_ms, math.inf)) - 1
        return stream_ms + (self._wait_marks[k][1] * self.frame_ms if k >= 0 else 0.0)

    def media_ms(self, call_ms: float) -> float:
        """The caller's media time of what was played at call time ``call_ms``: earlier by
        the delay the line and the buffer added then (for scoring turns against the
        caller's own audio; the last minute of changes is kept)."""
        k = bisect.bisect_right(self._offsets, (call_ms / self.frame_ms, math.inf)) - 1
        return call_ms - (self._offsets[k][1] * self.frame_ms if k >= 0 else 0.0)

    def push(self, frame: bytes, now_ms: float, media_ms: float | None = None) -> None:
        """One whole frame of caller media that arrived at call time ``now_ms``;
        ``media_ms``: its media time (RTP timestamp in ms from the stream's start), if
        known; else it follows the previous frame."""
        index = self._next_seq if media_ms is None else round(media_ms / self.frame_ms)
        self._next_seq = index + 1
        if index in self._seen:
            self.stats.duplicates += 1
            return
        self._remember(index)
        if self._play is not None and index < self._play:
            self.stats.late_dropped += 1
            return
        if index < self._highest:
            self.stats.reordered += 1
        self._highest = max(self._highest, index)
        self._frames[index] = frame
        self._transits.append(now_ms - index * self.frame_ms)
        if self._play is None:
            self._play = index
        self._bound()

    def pop(self) -> tuple[bytes, PlayKind]:
        """The caller frame for this tick and what it is."""
        frame, kind = self._pop()
        if kind == "wait":
            self._waited += 1
            if self._wait_marks and self._wait_marks[-1][0] == self._sent:
                self._wait_marks[-1] = (self._sent, self._waited)
            else:
                self._wait_marks.append((self._sent, self._waited))
        else:
            self._sent += 1
        return frame, kind

    def _pop(self) -> tuple[bytes, PlayKind]:
        st = self.stats
        st.ticks += 1
        self._update_target()
        if self._play is None:  # no caller media yet
            if st.ticks * self.frame_ms <= self.max_frames * self.frame_ms:
                st.wait_frames += 1
                return self._silence, "wait"
            st.gap_fill_frames += 1
            return self._silence, "silence"
        depth = self.depth
        # The delay the buffer adds: frames waiting behind the one played now.
        waiting = depth - (self._play in self._frames)
        st.depth_sum_frames += waiting
        st.depth_max_frames = max(st.depth_max_frames, waiting)
        frame = self._frames.pop(self._play, None)
        if frame is not None:
            offset = st.ticks - 1 - self._play
            if not self._offsets or self._offsets[-1][1] != offset:
                self._offsets.append((st.ticks - 1, offset))
            self._held = 0
            self._advance()
            pcm = self._plc.good(g711.decode(frame, self.encoding))
            if depth - 1 > st.target_frames:
                self._shrink_if_quiet(pcm)
            st.media_frames += 1
            return g711.encode(pcm, self.encoding), "media"
        holding = self._highest < self._play
        if holding:
            st.held_frames += 1
            self._held += 1
        else:
            st.lost_frames += 1
            self._advance()
        pcm = self._plc.conceal(self.samples)
        if pcm.any():
            st.concealed_frames += 1
            return g711.encode(pcm, self.encoding), "concealed"
        if holding and self._held <= self._conceal_frames + st.target_frames:
            # Concealment is over and the stream is still late by no more than the line's
            # jitter: pause it rather than feed silence a VAD would take for the end of the
            # caller's words (on a line without jitter, media that stops has stopped).
            st.wait_frames += 1
            return self._silence, "wait"
        st.gap_fill_frames += 1
        return self._silence, "silence"

    # -- internals ----------------------------------------------------------------------

    def _advance(self) -> None:
        assert self._play is not None
        self._play += 1

    def _remember(self, index: int) -> None:
        """Indices seen lately (a duplicate is one of them); bounded."""
        self._seen.add(index)
        self._seen_order.append(index)
        if len(self._seen_order) > _SEEN:
            self._seen.discard(self._seen_order.popleft())

    def _shrink_if_quiet(self, played: np.ndarray) -> None:  # type: ignore[type-arg]
        """Drop the next frame if it and the one just played are quiet: delay the line's
        jitter no longer needs, won back where nobody can hear it."""
        assert self._play is not None
        nxt = self._frames.get(self._play)
        if nxt is None or pcm_level_dbfs(played) > QUIET_DBFS:
            return
        if pcm_level_dbfs(g711.decode(nxt, self.encoding)) > QUIET_DBFS:
            return
        del self._frames[self._play]
        self._advance()
        self.stats.shrunk_frames += 1

    def _bound(self) -> None:
        """Never more than ``max_frames`` waiting: the oldest go (bounded latency)."""
        assert self._play is not None
        while self._highest - self._play + 1 > self.max_frames:
            if self._frames.pop(self._play, None) is not None:
                self.stats.overflow_dropped += 1
            else:
                self.stats.lost_frames += 1  # a hole the bound skips over
            self._advance()

    def _update_target(self) -> None:
        if not self._transits:
            return
        spread = max(self._transits) - min(self._transits)
        self.stats.transit_spread_ms = spread
        frames = math.ceil(spread / self.frame_ms - 1e-9)
        self.stats.target_frames = min(self.max_frames, max(self.min_frames, frames))

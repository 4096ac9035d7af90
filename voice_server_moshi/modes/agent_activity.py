"""Agent speech activity from what Moshi outputs: audio energy and its text stream.

Moshi never says when it starts or stops talking. Two pieces of evidence do:

* the level of each played agent frame against an adaptive noise floor (Moshi's "silence"
  is not digital silence, and a real checkpoint's floor differs from the dev one's), with a
  hangover so the gaps between words do not end a turn;
* its inner-monologue text: while text pieces arrive Moshi is (about to be) talking; when
  they stop, padding tokens are being generated, which means silence, so the hangover is
  shortened.

Text alone never starts a turn: only audio is heard by the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .settings import FullDuplexSettings

#: The floor is the quietest frame of the last few seconds (minimum statistics): the gaps
#: between words keep it down during speech, and a steady hum becomes the floor within
#: the window instead of passing for endless speech.
FLOOR_WINDOW_MS = 3000.0


@dataclass(frozen=True, slots=True)
class AgentTransition:
    """An agent turn boundary at call time ``t_ms``."""

    kind: str  # "start" | "end"
    t_ms: float


@dataclass(slots=True)
class AgentInterval:
    start_ms: float
    end_ms: float | None = None
    level_sum_db: float = 0.0
    level_frames: int = 0

    @property
    def mean_level_db(self) -> float | None:
        return self.level_sum_db / self.level_frames if self.level_frames else None


#: Agent turns kept per call (the state machine only looks at the most recent).
MAX_INTERVALS = 64


class AgentActivity:
    """Agent turn tracker; feed it every played frame in call-time order."""

    def __init__(self, settings: FullDuplexSettings, frame_ms: float) -> None:
        self.s = settings
        self.frame_ms = frame_ms
        self.floor_db: float | None = None
        self._levels: deque[float] = deque(maxlen=max(1, int(FLOOR_WINDOW_MS // frame_ms)))
        # Start times of recent voiced frames (10 s): was the agent heard in a window?
        self._voiced: deque[float] = deque(maxlen=max(1, int(10000 // frame_ms)))
        # Recent agent turns only: overlaps are judged against the last few seconds, and
        # a long call must not keep every turn it ever had.
        self.intervals: deque[AgentInterval] = deque(maxlen=MAX_INTERVALS)
        self._run_ms = 0.0
        self._run_start = 0.0
        self._last_voice_end: float | None = None
        self._last_text_ms: float | None = None
        self._now = 0.0

    @property
    def speaking(self) -> bool:
        return bool(self.intervals) and self.intervals[-1].end_ms is None

    def note_text(self, text: str, t_ms: float) -> None:
        """Moshi emitted a text piece at call time ``t_ms`` (blank pieces are padding)."""
        if text.strip():
            self._last_text_ms = t_ms

    def text_recent(self, t_ms: float) -> bool:
        return (
            self._last_text_ms is not None
            and t_ms - self._last_text_ms < self.s.agent_text_silence_ms
        )

    def process(
        self, level_db: float, t_ms: float, from_agent: bool = True
    ) -> list[AgentTransition]:
        """One played frame covering ``[t_ms, t_ms + frame_ms)`` at ``level_db`` dBFS.

        ``from_agent`` is False for the playout's filler silence (no agent audio yet, or an
        underrun): it is quiet time, but not the agent's floor.
        """
        out: list[AgentTransition] = []
        self._now = t_ms + self.frame_ms
        if from_agent:
            self._levels.append(level_db)
        self.floor_db = min(self._levels) if self._levels else level_db
        threshold = max(self.floor_db + self.s.agent_threshold_db, self.s.agent_min_level_dbfs)
        voiced = level_db > threshold
        if voiced:
            self._voiced.append(t_ms)
            if self._run_ms == 0.0:
                self._run_start = t_ms
            self._run_ms += self.frame_ms
            self._last_voice_end = t_ms + self.frame_ms
            if self.speaking:
                cur = self.intervals[-1]
                cur.level_sum_db += level_db
                cur.level_frames += 1
            elif self._run_ms >= max(self.s.agent_min_speech_ms, self.frame_ms):
                self.intervals.append(
                    AgentInterval(self._run_start, None, level_db, 1)
                )
                out.append(AgentTransition("start", self._run_start))
            return out
        self._run_ms = 0.0
        if self.speaking and self._last_voice_end is not None:
            quiet = self._now - self._last_voice_end
            hangover = (
                self.s.agent_hangover_ms
                if self.text_recent(t_ms)
                else self.s.agent_hangover_no_text_ms
            )
            if quiet >= hangover:
                self.intervals[-1].end_ms = self._last_voice_end
                out.append(AgentTransition("end", self._last_voice_end))
        return out

    def close(self, t_ms: float) -> list[AgentTransition]:
        """End an open turn when the call ends."""
        if self.speaking:
            end = self._last_voice_end if self._last_voice_end is not None else t_ms
            self.intervals[-1].end_ms = end
            return [AgentTransition("end", end)]
        return []

    def active_at(self, t_ms: float) -> bool:
        """Whether an agent turn (as known now) covers call time ``t_ms``."""
        for iv in reversed(self.intervals):
            if iv.start_ms <= t_ms and (iv.end_ms is None or t_ms < iv.end_ms):
                return True
            if iv.end_ms is not None and iv.end_ms <= t_ms:
                return False
        return False

    def voiced_between(self, start_ms: float, end_ms: float) -> bool:
        """Whether an audible agent frame started in ``[start_ms, end_ms)`` (last 10 s)."""
        return any(start_ms <= t < end_ms for t in reversed(self._voiced))

    def interval_at(self, t_ms: float) -> AgentInterval | None:
        for iv in reversed(self.intervals):
            if iv.start_ms <= t_ms and (iv.end_ms is None or t_ms < iv.end_ms):
                return iv
        return None

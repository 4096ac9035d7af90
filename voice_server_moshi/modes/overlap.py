"""Caller turns from the caller VAD, with overlap classification: backchannel or barge-in.

Caller speech that starts while the agent is not talking is a user turn at once. Caller
speech that starts during an agent turn is *pending* until its length settles it:

* it ends before ``max_backchannel_ms`` and the agent is heard again at least
  ``min_overlap_ms`` after the caller's onset (it kept talking, or resumed after a pause):
  a backchannel ("uh-huh", "yeah", "right"): no callback, recorded in
  :attr:`CallerTurns.overlaps`;
* it is still going ``max_backchannel_ms`` after onset, which the VAD can only confirm
  ``vad_hangover_ms`` later: a barge-in (``barge_in=True``) if the agent was heard after
  ``onset + min_overlap_ms``;
* otherwise the agent had finished as the caller began (the caller took the turn, a short
  "yes" included): an ordinary user turn, stamped with the caller's onset;
* optionally (``loud_barge_in_db``), caller speech that much louder than the agent's is a
  barge-in after ``min_overlap_ms`` without waiting.

The agent's pauses between phrases are why "the agent stopped" is never decided early: a
backchannel typically falls in such a pause, and the agent goes on. Everything is decided
on call time (stream time of the caller's and the agent's audio), so the result does not
depend on how late the events reach the mode.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Literal

from .agent_activity import AgentActivity
from .settings import FullDuplexSettings

Verdict = Literal["turn", "barge-in", "backchannel"]


@dataclass(frozen=True, slots=True)
class TurnAction:
    """What the mode must tell the host: a user turn started or ended at ``t_ms``."""

    kind: Literal["started", "ended"]
    t_ms: float
    barge_in: bool = False
    decided_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class OverlapDecision:
    """How caller speech that overlapped agent speech was classified, and when."""

    onset_ms: float
    end_ms: float | None
    verdict: Verdict
    decided_ms: float
    reason: str


#: Overlap decisions kept per call (the counts cover all of them).
MAX_OVERLAPS = 256


class CallerTurns:
    """State machine over caller speech-started / speech-ended and the call clock."""

    def __init__(self, settings: FullDuplexSettings, agent: AgentActivity) -> None:
        self.s = settings
        self.agent = agent
        self.state: Literal["idle", "pending", "turn"] = "idle"
        self.onset_ms = 0.0
        #: The most recent decisions (bounded: a long call keeps the last MAX_OVERLAPS);
        #: :attr:`verdicts` counts them all.
        self.overlaps: deque[OverlapDecision] = deque(maxlen=MAX_OVERLAPS)
        self.verdicts: Counter[str] = Counter()
        self._caller_level_sum = 0.0
        self._caller_level_n = 0

    def caller_level(self, level_db: float, t_ms: float) -> None:
        """Level of a caller frame sent at ``t_ms`` (for the energy-ratio rule)."""
        if self.state == "pending" and t_ms >= self.onset_ms:
            self._caller_level_sum += level_db
            self._caller_level_n += 1

    def speech_started(self, t_ms: float, now_ms: float) -> list[TurnAction]:
        if self.state != "idle":
            return []  # a repeated start: the VAD's, not a new turn
        self.onset_ms = t_ms
        self._caller_level_sum, self._caller_level_n = 0.0, 0
        if self.s.backchannel_detection and self.agent.active_at(t_ms):
            self.state = "pending"
            return []
        self.state = "turn"
        return [TurnAction("started", t_ms, False, now_ms)]

    def speech_ended(self, t_ms: float, now_ms: float) -> list[TurnAction]:
        if self.state == "turn":
            self.state = "idle"
            return [TurnAction("ended", t_ms, False, now_ms)]
        if self.state != "pending":
            return []
        self.state = "idle"
        duration = t_ms - self.onset_ms
        heard = self._agent_heard_after_onset(now_ms)
        if duration < self.s.max_backchannel_ms and heard:
            self._decide(t_ms, "backchannel", now_ms, f"ended after {duration:.0f} ms")
            return []
        # Long enough to be a turn (the clock had not settled it yet), or the agent had
        # finished: the caller took the turn.
        verdict: Verdict = "barge-in" if heard and duration >= self.s.max_backchannel_ms \
            else "turn"
        self._decide(t_ms, verdict, now_ms, f"lasted {duration:.0f} ms, agent heard: {heard}")
        return [
            TurnAction("started", self.onset_ms, verdict == "barge-in", now_ms),
            TurnAction("ended", t_ms, False, now_ms),
        ]

    def tick(self, now_ms: float) -> list[TurnAction]:
        """Settle a pending overlap once the call clock tells enough."""
        if self.state != "pending":
            return []
        if now_ms >= self.onset_ms + self.s.max_backchannel_ms + self.s.vad_hangover_ms:
            if self._agent_heard_after_onset(now_ms):
                return self._promote(now_ms, "barge-in", "longer than max_backchannel_ms")
            return self._promote(now_ms, "turn", "agent silent since the onset")
        loud = self.s.loud_barge_in_db
        iv = self.agent.interval_at(self.onset_ms)
        if (
            loud is not None
            and now_ms >= self.onset_ms + self.s.min_overlap_ms
            and self._caller_level_n
            and iv is not None
            and iv.mean_level_db is not None
            and self._agent_heard_after_onset(now_ms)
        ):
            caller_db = self._caller_level_sum / self._caller_level_n
            if caller_db - iv.mean_level_db >= loud:
                return self._promote(
                    now_ms, "barge-in", f"caller {caller_db - iv.mean_level_db:.1f} dB louder"
                )
        return []

    def _agent_heard_after_onset(self, now_ms: float) -> bool:
        return self.agent.voiced_between(self.onset_ms + self.s.min_overlap_ms, now_ms)

    def _promote(self, now_ms: float, verdict: Verdict, reason: str) -> list[TurnAction]:
        self.state = "turn"
        self._decide(None, verdict, now_ms, reason)
        return [TurnAction("started", self.onset_ms, verdict == "barge-in", now_ms)]

    def _decide(self, end_ms: float | None, verdict: Verdict, now_ms: float, reason: str) -> None:
        self.overlaps.append(OverlapDecision(self.onset_ms, end_ms, verdict, now_ms, reason))
        self.verdicts[verdict] += 1

    def close(self, t_ms: float) -> list[TurnAction]:
        """The call ended: close an open user turn; a pending overlap is dropped."""
        state, self.state = self.state, "idle"
        if state == "turn":
            return [TurnAction("ended", t_ms, False, t_ms)]
        return []

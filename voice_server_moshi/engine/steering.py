"""Steering one call's Moshi streams: say this text, say this audio, cancel (ADR 0070).

Per call (:class:`SlotSteering`, one per engine slot): a queue of requests, each forcing
the row's text stream (and for say-audio the agent's own audio codes) for some steps.
Per engine (:class:`SteeringHooks`): the two ``LMGen`` hooks that apply this step's
forcing to the batch in place, row by row, on the device:

* ``on_text_hook`` sees the sampled text tokens ``[B]`` before the depth transformer
  uses them; forced rows get their token written over the sample (or, while a word's
  padding may end, ``EPAD`` when the model itself sampled something other than ``PAD``:
  Moshi paces the words, bounded by the speaking rate);
* ``on_audio_hook`` sees the agent's audio codes ``[B, dep_q]`` before they enter the
  context; forced rows get the host's codes, each codebook at its own delay.

Rows with nothing to force keep their sampled tokens bit for bit. ``depformer_replace_tokens``
is not used: it replaces every row of the batch at once.

Thread model: host-side methods (say/cancel) take a lock and may be called from any
thread; :meth:`SlotSteering.plan`, :meth:`SlotSteering.commit` and the hooks run on the
engine's tick thread.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import SteeringRequestError
from .steering_layout import Pacing, Tokenizer, Word, timed_actions, words_of

SteerStatus = Literal["started", "finished", "cancelled"]

#: Text action: let the model end a word's padding (EPAD if it sampled non-PAD, else PAD).
CHOOSE = -1
#: Most requests one call may queue; more is refused (bounded memory).
MAX_QUEUED = 32
#: Longest say-audio clip, in frames (60 s).
MAX_AUDIO_FRAMES = 750


class SteeringError(SteeringRequestError):
    """A steering request that cannot be accepted (empty text, queue full, bad audio)."""


@dataclass(frozen=True, slots=True)
class SteerEvent:
    """A request's progress, delivered with an output frame: ``started`` with its first
    steered frame, ``finished`` / ``cancelled`` with the first frame after its last."""

    request_id: str
    status: SteerStatus


@dataclass(frozen=True, slots=True)
class SteeringSpec:
    """What steering needs to know of the model."""

    tokenizer: Tokenizer | None
    text_card: int
    pad: int
    epad: int
    #: Delays of the agent's audio codebooks (``lm.delays[1 : dep_q + 1]``).
    audio_delays: tuple[int, ...]
    #: Output lag of LMGen: the frame generated at step t is delivered at step t + lag.
    lag: int
    pacing: Pacing = field(default_factory=Pacing)

    @property
    def dep_q(self) -> int:
        return len(self.audio_delays)

    @classmethod
    def of(cls, lm: Any, tokenizer: Tokenizer | None, pacing: Pacing | None = None
           ) -> SteeringSpec:
        delays = tuple(int(d) for d in lm.delays)
        return cls(tokenizer, int(lm.text_card), int(lm.text_padding_token_id),
                   int(lm.end_of_text_padding_id), delays[1: lm.dep_q + 1], max(delays),
                   pacing or Pacing())


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One row's forcing for one step: text action (token id, CHOOSE or None) and, per
    agent codebook, a code or None."""

    text: int | None
    audio: tuple[int | None, ...] | None


class _Request:
    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.r = 0  # steps run
        self.started = False
        self.cancelled = False

    def text_action(self) -> int | None:
        raise NotImplementedError

    def audio_codes(self) -> tuple[int | None, ...] | None:
        return None

    def commit(self, actual: int) -> None:
        self.r += 1

    @property
    def speaking(self) -> bool:
        """Its own frames are still being produced (finished once False)."""
        raise NotImplementedError

    @property
    def done(self) -> bool:
        """Nothing left to force (an audio request's acoustic tail included)."""
        return not self.speaking

    def cancel(self) -> None:
        self.cancelled = True


class _TextRequest(_Request):
    """Say-text: words forced in order; Moshi chooses when padding ends, within bounds."""

    def __init__(self, request_id: str, words: list[Word], spec: SteeringSpec) -> None:
        super().__init__(request_id)
        self.words = words
        self.spec = spec
        self.wi = 0
        self.phase: Literal["epad", "tok", "pad", "done"] = "epad"
        self.ti = 0
        self.pads = 0

    def begin(self, prev_token: int) -> None:
        # A word right after EPAD (or after another word's tokens) needs no EPAD of its own.
        if prev_token != self.spec.pad:
            self.phase = "tok"

    def text_action(self) -> int | None:
        w, s = self.words[self.wi], self.spec
        if self.phase == "epad":
            return s.epad
        if self.phase == "tok":
            return w.tokens[self.ti]
        if self.phase == "pad":
            last = self.wi == len(self.words) - 1
            if last:
                return s.pad
            return CHOOSE if self.pads < w.max_pads else s.epad
        return None

    def commit(self, actual: int) -> None:
        super().commit(actual)
        w, s = self.words[self.wi], self.spec
        if self.phase == "epad":
            self.phase, self.ti = "tok", 0
        elif self.phase == "tok":
            self.ti += 1
            if self.ti == len(w.tokens):
                self.phase, self.pads = "pad", 0
                self._maybe_done()
        elif self.phase == "pad":
            if actual == s.epad and self.wi < len(self.words) - 1:
                self.wi, self.phase, self.ti = self.wi + 1, "tok", 0
            else:
                self.pads += 1
                self._maybe_done()

    def _maybe_done(self) -> None:
        if self.wi == len(self.words) - 1 and self.pads >= self.words[self.wi].max_pads:
            self.phase = "done"

    @property
    def speaking(self) -> bool:
        return self.phase != "done" and not self.cancelled


class _AudioRequest(_Request):
    """Say-audio: the host's codes on the agent's stream (each codebook at its delay) and
    its text laid out over the same frames, all forced."""

    def __init__(self, request_id: str, codes: npt.NDArray[np.int64], text: list[int],
                 delays: tuple[int, ...]) -> None:
        super().__init__(request_id)
        self.codes = codes
        self.n = codes.shape[1]
        self.text = text
        self.delays = delays
        self.dmin = min(delays)
        self.dmax = max(delays)

    def text_action(self) -> int | None:
        return self.text[self.r] if self.r < len(self.text) and not self.cancelled else None

    def audio_codes(self) -> tuple[int | None, ...] | None:
        r, out = self.r, []
        for k, d in enumerate(self.delays):
            j = r - d
            out.append(int(self.codes[k, j]) if 0 <= j < self.n else None)
        return tuple(out) if any(c is not None for c in out) else None

    def cancel(self) -> None:
        # Frames already begun (a lower codebook forced) finish their higher codebooks on
        # the next step: a frame cut between codebooks would decode to a glitch.
        super().cancel()
        self.n = max(0, min(self.n, self.r - self.dmin))

    @property
    def speaking(self) -> bool:
        if self.cancelled:
            return False
        return self.r < max(self.n, len(self.text))

    @property
    def done(self) -> bool:
        return not self.speaking and self.r >= self.n + self.dmax


class SlotSteering:
    """One call's steering queue (see the module docstring)."""

    def __init__(self, spec: SteeringSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        self._current: _Request | None = None
        self._tail: _Request | None = None  # an audio request finishing acoustic codes
        self._pending_events: list[SteerEvent] = []
        self._history: deque[tuple[str | None, tuple[SteerEvent, ...]]] = deque()
        self._step_events: list[SteerEvent] = []
        self._step_plan: StepPlan | None = None
        self._step_owner: str | None = None
        #: Requests accepted (for ids), and how many steps forced something.
        self.requests = 0
        self.forced_steps = 0

    # -- host side (any thread) -------------------------------------------------------

    def say_text(self, text: str, request_id: str | None = None) -> str:
        """Queue text for the agent to say; returns the request id."""
        if self.spec.tokenizer is None:
            raise SteeringError("this model has no text tokenizer: it cannot be steered by text")
        words = self._words(text)
        rid = request_id or self._new_id()
        self._enqueue(_TextRequest(rid, words, self.spec))
        return rid

    def say_codes(self, codes: npt.NDArray[np.int64], text: str = "", *,
                  voiced: tuple[int, int] | None = None, request_id: str | None = None) -> str:
        """Queue Mimi codes ``[dep_q, N]`` (the host's audio, encoded) with their text."""
        s = self.spec
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != s.dep_q or codes.shape[1] < 1:
            raise SteeringError(f"audio codes must be [{s.dep_q}, N>=1], got {codes.shape}")
        if codes.shape[1] > MAX_AUDIO_FRAMES:
            raise SteeringError(f"audio of {codes.shape[1]} frames is over the "
                                f"{MAX_AUDIO_FRAMES}-frame ({MAX_AUDIO_FRAMES * 0.08:.0f} s) limit")
        n = codes.shape[1]
        start, end = voiced if voiced is not None else (0, n)
        text_actions: list[int] = []
        if text.strip():
            if s.tokenizer is None:
                raise SteeringError("this model has no text tokenizer for the audio's text")
            text_actions = timed_actions(self._words(text), n, start=start, end=end,
                                         pad=s.pad, epad=s.epad)
        rid = request_id or self._new_id()
        self._enqueue(_AudioRequest(rid, codes.astype(np.int64), text_actions,
                                    s.audio_delays))
        return rid

    def cancel(self, flush: bool = True) -> list[str]:
        """Stop the request being said at the next step; with ``flush``, drop the queued
        ones too. Returns the ids cancelled (each also gets a ``cancelled`` event)."""
        ids: list[str] = []
        with self._lock:
            cur = self._current
            if cur is not None and cur.speaking:
                cur.cancel()
                ids.append(cur.id)
            if flush:
                while self._queue:
                    req = self._queue.popleft()
                    ids.append(req.id)
                    self._pending_events.append(SteerEvent(req.id, "cancelled"))
        return ids

    @property
    def active(self) -> bool:
        with self._lock:
            return bool(self._queue) or self._current is not None or self._tail is not None

    # -- engine side (tick thread) ----------------------------------------------------

    def plan(self, prev_token: Any) -> StepPlan | None:
        """This step's forcing. ``prev_token()`` gives the row's last text token (called
        only when a text request starts)."""
        with self._lock:
            self._step_events = self._pending_events
            self._pending_events = []
            cur = self._current
            if cur is not None and cur.cancelled:
                self._step_events.append(SteerEvent(cur.id, "cancelled"))
                self._retire(cur)
                cur = self._current
            if cur is None and self._queue:
                cur = self._current = self._queue.popleft()
            if cur is not None and not cur.started:
                cur.started = True
                if isinstance(cur, _TextRequest):
                    cur.begin(int(prev_token()))
                self._step_events.append(SteerEvent(cur.id, "started"))
            text = cur.text_action() if cur is not None else None
            audio = cur.audio_codes() if cur is not None else None
            tail = self._tail.audio_codes() if self._tail is not None else None
            if tail is not None:
                audio = tail if audio is None else tuple(
                    a if a is not None else t for a, t in zip(audio, tail, strict=True))
            plan = None if text is None and audio is None else StepPlan(text, audio)
            self._step_plan = plan
            own = cur is not None and (text is not None or cur.audio_codes() is not None)
            self._step_owner = cur.id if own and cur is not None else None
            return plan

    def commit(self, actual_text: int | None) -> None:
        """The step ran; ``actual_text`` is the row's text token after forcing (needed only
        when the plan was CHOOSE)."""
        with self._lock:
            plan, cur = self._step_plan, self._current
            self._step_plan = None
            if plan is not None:
                self.forced_steps += 1
            # The step ran with the plan made before it, even if a cancel came meanwhile.
            steered, self._step_owner = self._step_owner, None
            if self._tail is not None:
                self._tail.commit(-1)
                if self._tail.done:
                    self._tail = None
            if cur is not None:
                text = plan.text if plan is not None else None
                actual = actual_text if text == CHOOSE else text
                cur.commit(self.spec.pad if actual is None else actual)
                if cur.cancelled:  # cancelled while this step ran (another thread)
                    self._pending_events.append(SteerEvent(cur.id, "cancelled"))
                    self._retire(cur)
                elif not cur.speaking:
                    # Reported with the first frame after it: the request's speech is over.
                    self._pending_events.append(SteerEvent(cur.id, "finished"))
                    self._retire(cur)
            self._history.append((steered, tuple(self._step_events)))
            self._step_events = []

    def output_marks(self) -> tuple[str | None, tuple[SteerEvent, ...]]:
        """(request id steering the frame now delivered, its events): the frame generated
        ``lag`` steps ago. Called once per delivered output."""
        with self._lock:
            if len(self._history) <= self.spec.lag:
                return None, ()
            return self._history.popleft()

    # -- internals ----------------------------------------------------------------------

    def _retire(self, req: _Request) -> None:
        # Called with the lock held. An audio request may still owe acoustic codes.
        self._current = None
        if not req.done:
            self._tail = req

    def _words(self, text: str) -> list[Word]:
        s = self.spec
        assert s.tokenizer is not None
        try:
            return words_of(text, s.tokenizer, text_card=s.text_card,
                            reserved=frozenset((s.pad, s.epad)), pacing=s.pacing)
        except ValueError as exc:
            raise SteeringError(str(exc)) from None

    def _enqueue(self, req: _Request) -> None:
        with self._lock:
            if len(self._queue) >= MAX_QUEUED:
                raise SteeringError(f"{MAX_QUEUED} steering requests already queued; "
                                    "cancel or wait for some to finish")
            self._queue.append(req)
            self.requests += 1

    @staticmethod
    def _new_id() -> str:
        return f"say-{uuid.uuid4().hex[:10]}"

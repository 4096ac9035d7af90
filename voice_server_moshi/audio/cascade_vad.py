"""``"cascade"``: a cheap level gate, Silero only where needed, background- and echo-aware.

Per 10 ms step at 8 kHz (other rates are resampled first), the step's level must clear
three references before it counts as *loud*:

* the noise floor: minimum statistics over 1.5 s, as the energy VAD (``threshold_db``);
* the background: the median level of the last 3 s of steps that were not caller speech
  (``background_db`` above it). Minimum statistics sit far below a babble bed, music or a
  street, whose level never dips for long; a median follows them and keeps adapting while
  they last. It is frozen while the caller speaks (their pauses would drag it up), for at
  most ``freeze_max_ms``, so a lasting rise is learnt even if it was taken for speech;
* the echo estimate: the agent's own outgoing audio (fed through ``agent_audio`` as it is
  sent, in caller time) at any lag up to ``echo_lag_ms``, plus the echo path gain, learnt
  as the median of caller-minus-agent level over 100 ms blocks while the agent talks and
  the caller does not (``echo_margin_db`` above it). Before anything is learnt the gain is
  taken as -10 dB (strong echo), so early echo is not taken for the caller. A block in which
  nothing rose above the background reference is no evidence of an echo (the bed's peaks
  over the agent are not its echo): it only caps the gain so that the echo reference stays
  at the background's at that agent level.

Two consecutive loud steps open a *candidate*: only then does Silero v6 run (the 32 ms
windows from one before the candidate's onset; :mod:`.silero`), and the candidate becomes
speech at the first window overlapping it with probability >= ``p_start``; the start is
stamped at the candidate's first loud step (or earlier: a candidate that lapsed just
before, or the steps before it still clear of the background; ``backtrack_ms``). A
candidate lapses after ``gate_hold_ms`` without a loud step. Speech ends after
``hangover_ms`` of steps below the references less ``hysteresis_db`` (once a pause has
lasted ``bridge_after_ms``, only a step clearing the references themselves resumes it), or
when Silero, run on every ``end_check_every``-th window of speech, finds ``end_checks`` in a
row below ``p_continue`` (a moving background's own peaks clear the level gate). Silero
bridges a pause (p >= ``p_continue`` keeps the turn) over a stationary background for up to
``bridge_max_ms``, and over any background in the first ``bridge_early_ms`` of speech for
up to ``bridge_early_max_ms`` ("Wait, | sorry": a barge-in's first comma). Silero thus rejects
loud non-speech (horns, music, clicks) and the level cues reject speech that is not the
caller's (babble, echo); the model runs on a few windows per caller onset and on one window
in two of caller speech, never on silence or noise alone, instead of 31 per second.
Numbers: docs/adr/0085-caller-vad-cascade.md.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from numpy.typing import NDArray

from .framing import SampleFramer
from .resample import Resampler
from .silero import CONTEXT, RATE, WINDOW, SileroProb
from .silero_vad import as_float32
from .step_levels import STEP, STEP_MS, LevelRing, step_levels, whole_steps
from .vad import VadTransition

__all__ = ["CascadeVad"]

_SILENCE_DB = -100.0
_HIST = CONTEXT + 8 * WINDOW  # samples kept for catching up on a candidate's onset
F32 = NDArray[np.float32]


class CascadeVad:
    """Feed caller audio to ``process``; the agent's outgoing audio to ``agent_audio``."""

    def __init__(
        self,
        sample_rate: int = 8000,
        threshold_db: float = 9.0,
        hangover_ms: int = 300,
        *,
        background_db: float = 7.0,
        echo_margin_db: float = 6.0,
        p_start: float = 0.5,
        p_continue: float = 0.35,
        bridge_after_ms: int = 100,
        bridge_max_ms: int = 1000,
        bridge_max_spread_db: float = 3.0,
        bridge_early_ms: int = 600,
        bridge_early_max_ms: int = 64,
        warmup_windows: int = 3,
        min_level_dbfs: float = -55.0,
        hysteresis_db: float = 3.0,
        backtrack_ms: int = 300,
        backtrack_db: float = 3.0,
        end_check_every: int = 2,
        end_checks: int = 4,
        start_frames: int = 2,
        floor_window_ms: int = 1500,
        background_window_ms: int = 3000,
        freeze_max_ms: int = 8000,
        gate_hold_ms: int = 100,
        echo_lag_ms: int = 300,
        agent_active_dbfs: float = -45.0,
        initial_echo_gain_db: float = -10.0,
        max_echo_gain_db: float = 0.0,
    ) -> None:
        if threshold_db < 0 or background_db < 0 or hangover_ms < 0 or start_frames < 1:
            raise ValueError("threshold_db, background_db, hangover_ms >= 0; start_frames >= 1")
        if not 0 < p_start < 1:
            raise ValueError(f"p_start must be in (0, 1), got {p_start}")
        self.sample_rate = sample_rate
        self.threshold_db = threshold_db
        self.background_db = background_db
        self.echo_margin_db = echo_margin_db
        self.p_start = p_start
        self.p_continue = p_continue
        self.bridge_max_spread_db = bridge_max_spread_db
        self._bridge_after = max(1, bridge_after_ms // 10)
        self._bridge_max = max(1, bridge_max_ms // 32)
        self._bridge, self._bridged, self._bridge_cap = False, 0, 0
        self._bridge_early = max(0, bridge_early_ms // 10)
        self._bridge_early_max = max(1, bridge_early_max_ms // 32)
        self._warmup = max(1, warmup_windows)
        self._cand_first = 0  # the candidate's first loud step (before any rejection)
        self.background_spread_db = 0.0
        self.min_level_dbfs = min_level_dbfs
        self.hysteresis_db = hysteresis_db
        self._backtrack = max(0, backtrack_ms // 10)
        self.backtrack_db = backtrack_db
        self._check_every = max(1, end_check_every)
        self._end_checks = max(1, end_checks)
        self._unvoiced = 0
        self._voiced_end = 0  # sample just past the last window Silero took for speech
        self._recent: deque[float] = deque(maxlen=128)  # the last 1.28 s of step levels
        self.start_frames = start_frames
        self._hang = max(1, math.ceil(hangover_ms / STEP_MS))
        self._hold = max(1, math.ceil(gate_hold_ms / STEP_MS))
        self._freeze_max = max(1, freeze_max_ms // 10)
        self._lag = max(1, echo_lag_ms // 10)
        self.agent_active_dbfs = agent_active_dbfs
        self._g0 = initial_echo_gain_db
        self.max_echo_gain_db = max_echo_gain_db
        self._rs = Resampler(sample_rate, RATE) if sample_rate != RATE else None
        self._framer = SampleFramer(STEP, np.float32)
        self._model = SileroProb()
        # Noise floor: minimum statistics in 100 ms blocks (as EnergyVad).
        self._blocks: deque[float] = deque(maxlen=max(1, floor_window_ms // 100))
        self._block_min = math.inf
        self._block_n = 0
        # Background: ring of recent non-speech levels; the median is refreshed per block.
        self._bg = np.full(max(10, background_window_ms // 10), np.nan)
        self._bg_i = 0
        self._bg_n = 0
        self.background_dbfs = _SILENCE_DB
        # Echo: agent levels by caller step; per-block caller-minus-agent differences.
        self._agent = LevelRing(sample_rate)
        self._echo_d: deque[float] = deque(maxlen=60)
        self.echo_gain_db = initial_echo_gain_db
        self._blk_levels: list[float] = []
        self._blk_caller = False  # the caller spoke (or may have) in this block
        # Samples for Silero: the last _HIST samples, ending at absolute sample _n.
        self._hist: F32 = np.zeros(0, np.float32)
        self._hist_end = 0  # absolute index just past the last sample in _hist
        self._n = 0  # samples the state machine has stepped through
        self._next_win = 0  # next window (index) to consider
        self._ran_upto = 0  # windows below this were run (or are too old to matter)
        # State machine.
        self._j = 0
        self.speaking = False
        self._loud_run = 0
        self._quiet_run = 0
        self._cand = False
        self._cand_onset = 0
        self._lapsed = (-1, -1)  # (onset, step it lapsed at) of the last lapsed candidate
        self._stale_until = -1
        self._rejected = 0
        self._max_reject = 4
        self._recheck = 4
        self._speak_steps = 0
        self._below = 0
        self._last_loud = 0
        self.level_db = _SILENCE_DB
        self.noise_floor_db = _SILENCE_DB
        self.windows_run = 0

    def agent_audio(self, samples: NDArray[np.int16] | NDArray[np.float32], t_ms: float) -> None:
        """The agent audio sent to the caller. It is placed at the caller time it is sent
        (not ``t_ms``, its agent stream time): an echo can only follow what was sent."""
        self._agent.push(as_float32(samples), self._j)

    def _agent_max(self, j: int, first: int | None = None) -> float:
        return self._agent.max(j - self._lag if first is None else first, j)  # lag window

    # -- caller audio --------------------------------------------------------------------

    def process(self, samples: NDArray[np.int16] | NDArray[np.float32]) -> list[VadTransition]:
        """Feed caller audio; return the transitions it completes, in order."""
        x = as_float32(samples)
        if self._rs is not None:
            x = np.asarray(self._rs.process(x), dtype=np.float32)
        block = whole_steps(self._framer, x)
        if block is None:
            return []
        self._hist = np.concatenate((self._hist, block))[-_HIST:]
        self._hist_end += len(block)
        levels = step_levels(block)
        out: list[VadTransition] = []
        for level in levels:
            self._n += STEP
            t = self._step(level)
            if t is not None:
                out.append(t)
            if self._cand and not self.speaking:
                t = self._run_windows()
                if t is not None:
                    out.append(t)
            elif self._bridge and self.speaking:
                self._run_bridge()
            elif self.speaking:
                t = self._run_end_check()
                if t is not None:
                    out.append(t)
        if not self._cand and not self._bridge and not self.speaking:
            # Windows nobody needs are skipped (kept in the history for a catch-up).
            self._next_win = self._n // WINDOW
        return out

    def _reference(self, j: int, level: float, floor: float) -> float:
        """The level a step must exceed to be loud (before the margins' hysteresis)."""
        ref = max(floor + self.threshold_db, self.background_dbfs + self.background_db,
                  self.min_level_dbfs)
        if level >= ref:
            a = self._agent_max(j)
            if a > self.agent_active_dbfs:
                ref = max(ref, a + self.echo_gain_db + self.echo_margin_db)
        return ref

    def _step(self, level: float) -> VadTransition | None:
        j = self._j
        self._j += 1
        self.level_db = level
        self._recent.append(level)
        self._block_min = min(self._block_min, level)
        self._block_n += 1
        floor = min(self._block_min, min(self._blocks, default=math.inf))
        self.noise_floor_db = floor
        self._blk_levels.append(level)
        self._blk_caller = self._blk_caller or self.speaking or self._cand
        if self._block_n == 10:
            self._end_block(j)
        ref = self._reference(j, level, floor)
        if not self.speaking:
            self._push_background(level)
            if level >= ref:
                self._loud_run += 1
                self._quiet_run = 0
                if (self._loud_run == 1 and not self._cand) or (
                        0 <= self._stale_until <= j * STEP):
                    self._cand_onset = j
                    self._stale_until = -1
                if self._loud_run >= self.start_frames and not self._cand:
                    self._open_candidate()
            else:
                self._loud_run = 0
                self._quiet_run += 1
                if self._quiet_run >= self._hold:
                    if self._cand:  # its onset may still be the start of what follows
                        self._lapsed = (self._cand_first, j)
                    self._cand = False
            return None
        self._speak_steps += 1
        if self._speak_steps > self._freeze_max:
            self._push_background(level)
        # In a pause (``bridge_after_ms`` below), resuming is a new onset and must clear the
        # reference itself: a moving background's peaks, under it but over it less the
        # hysteresis, held finished backchannels open past max_backchannel_ms.
        keep = ref if self._below >= self._bridge_after else ref - self.hysteresis_db
        if level < keep:
            self._below += 1
            stationary = self.background_spread_db < self.bridge_max_spread_db
            if (self._below == self._bridge_after and not self._bridge
                    and (stationary or self._speak_steps <= self._bridge_early)):
                self._open_window_run(j - self._below + 1)
                self._bridge, self._bridged = True, 0
                self._bridge_cap = self._bridge_max if stationary else self._bridge_early_max
            if self._below >= self._hang:
                return self._end_speech((self._last_loud + 1) * STEP_MS)
        else:
            self._below = 0
            self._last_loud = j
            self._bridge = False
        return None

    def _end_block(self, j: int) -> None:
        self._blocks.append(self._block_min)
        self._block_min, self._block_n = math.inf, 0
        if self._bg_n:
            bg = self._bg[: min(self._bg_n, len(self._bg))]
            self.background_dbfs = float(np.median(bg))
            self.background_spread_db = float(np.std(bg))
        # Learn the echo gain only once the agent has been heard a whole lag ago (its echo
        # has had time to arrive), loud enough that an echo could rise above the caller's
        # floor, and while the caller is not speaking: blocks of caller speech over the agent
        # taught it the caller's level as echo (+29 dB on the sample call, every later word
        # then masked). An echo taken for speech still gets learnt: after ``freeze_max_ms``
        # of "speech" its blocks count (no caller talks that long over the agent), and the
        # cautious prior keeps ordinary echo (gain under -4 dB) from being taken at all.
        agent = self._agent_max(j - self._lag + 9, j - self._lag)
        caller_free = not self._blk_caller or self._speak_steps > self._freeze_max
        if caller_free and agent > max(self.agent_active_dbfs,
                                       self.noise_floor_db + self.threshold_db):
            # The block's loudest step against the loudest agent step that can echo into it:
            # echo peaks follow agent peaks, so this tracks the echo path gain; the median
            # of blocks where the agent pauses or nothing comes back sits below it. A
            # passive echo path does not amplify: the estimate is capped (max_echo_gain_db).
            peak, a_peak = max(self._blk_levels), self._agent_max(j, j - self._lag - 9)
            d = peak - a_peak
            bg_ref = self.background_dbfs + self.background_db
            if peak < bg_ref:
                # Nothing rose above the background: the bed's peaks are no echo (learnt as
                # one, a brown bed at 5 dB SNR made a -6 dB "echo" over the caller's words).
                # The block only says an echo stays under the background at this agent
                # level; where even the current estimate does, it says nothing.
                skip = a_peak + self.echo_gain_db + self.echo_margin_db < bg_ref
                d = math.nan if skip else min(d, bg_ref - self.echo_margin_db - a_peak)
            if not math.isnan(d):
                self._echo_d.append(min(d, self.max_echo_gain_db))
                g = float(np.percentile(self._echo_d, 80))
                # Under a second of evidence: no lower than the cautious prior.
                self.echo_gain_db = g if len(self._echo_d) >= 10 else max(g, self._g0)
        self._blk_caller = False
        self._blk_levels = []

    def _push_background(self, level: float) -> None:
        self._bg[self._bg_i] = level
        self._bg_i = (self._bg_i + 1) % len(self._bg)
        self._bg_n += 1
        if self._bg_n < 10:
            self.background_dbfs = float(np.median(self._bg[: self._bg_n]))

    # -- Silero on candidates ------------------------------------------------------------

    def _open_candidate(self) -> None:
        self._cand = True
        self._stale_until = -1
        self._rejected = 0
        self._cand_first = self._cand_onset
        self._open_window_run(self._cand_onset)

    def _open_window_run(self, first_step: int) -> None:
        """Have Silero run from one window before the one holding ``first_step``."""
        onset = first_step * STEP
        # From one window before the one holding the onset, within the kept history.
        first_kept = -(-(self._hist_end - len(self._hist) + CONTEXT) // WINDOW)
        want = max(onset // WINDOW - 1, first_kept, 0)
        if want - self._ran_upto > 30:
            self._model.reset_state()  # a second or more unheard: start it afresh
            # Cold, it gave a first word at 5 dB p 0.06-0.46 (warm 0.6-0.94); warmed on a
            # babble or crowd bed it took the bed's voices for the caller: stationary only.
            if self.background_spread_db < self.bridge_max_spread_db:
                want = max(onset // WINDOW - self._warmup, first_kept, 0)
        self._next_win = max(min(want, self._next_win), self._ran_upto, first_kept)

    def _onset_step(self) -> int:
        """The confirmed candidate's onset: that of a candidate which lapsed at most
        ``backtrack_ms`` before it, else moved back over the steps just before it that
        still stand clear of the background (``backtrack_db``, or twice its spread), for
        at most ``backtrack_ms``: in noise a word's first syllables are under the loud
        reference, which only its louder part clears (at 5 dB SNR, 100-300 ms late)."""
        onset = self._cand_first
        # A candidate that lapsed just before this one (a first syllable Silero did not
        # take for speech at low SNR, then a pause) was this speech's start.
        lapsed_onset, lapsed_at = self._lapsed
        if 0 <= onset - lapsed_at <= self._backtrack and lapsed_onset < onset:
            return lapsed_onset
        floor = self.background_dbfs + max(self.backtrack_db, 2.0 * self.background_spread_db)
        newest = self._j - 1  # the step self._recent[-1] holds
        for _ in range(self._backtrack):
            back = newest - (onset - 1)
            if onset < 1 or back >= len(self._recent) or self._recent[-1 - back] < floor:
                break
            onset -= 1
        return onset

    def _next_probability(self) -> tuple[int, float] | None:
        """Silero on the next window that has arrived whole (ones no longer kept are
        skipped): (window index, speech probability), or None when none is ready."""
        base = self._hist_end - len(self._hist)
        while (self._next_win + 1) * WINDOW <= self._n:
            w = self._next_win
            self._next_win += 1
            a = w * WINDOW - CONTEXT - base
            if a < 0:
                continue
            p = self._model.run(self._hist[a : a + CONTEXT + WINDOW])
            self._ran_upto = self._next_win
            self.windows_run += 1
            return w, p
        return None

    def _run_windows(self) -> VadTransition | None:
        onset = self._cand_onset * STEP
        while (got := self._next_probability()) is not None:
            w, p = got
            if w * WINDOW >= onset + 2 * WINDOW and p < self.p_start:
                # Loud but not speech two windows in (a horn, a chord): the candidate's
                # onset moves to its next loud step, where speech may begin; after a few
                # such windows only every ``_recheck``-th is looked at while it lasts.
                self._stale_until = (w + 1) * WINDOW
                self._rejected += 1
                if self._rejected >= self._max_reject:
                    self._next_win += self._recheck - 1
            if (w + 1) * WINDOW > onset and p >= self.p_start:
                self.speaking = True
                self._cand = False
                self._speak_steps = self._below = 0
                self._last_loud = self._j - 1
                # Silero also decides when speech ends (_run_end_check): over a background
                # that moves (babble, music, street), its own peaks clear the level gate and
                # kept a short "right" open for a second, long enough for a barge-in.
                self._unvoiced, self._voiced_end = 0, (w + 1) * WINDOW
                return VadTransition("start", self._onset_step() * STEP_MS,
                                     max((w + 1) * WINDOW / 8.0, self._j * STEP_MS))
        return None

    def _end_speech(self, t_ms: float) -> VadTransition:
        self.speaking = False
        self._cand = self._bridge = False
        self._loud_run = self._quiet_run = 0
        return VadTransition("end", t_ms, self._j * STEP_MS)

    def _run_end_check(self) -> VadTransition | None:
        """Silero on every ``end_check_every``-th window of speech: ``end_checks``
        not-speech windows in a row end it, stamped at the end of the last window taken
        for speech. The level gate's own end (``hangover_ms`` below the references) still
        applies, whichever comes first."""
        while (got := self._next_probability()) is not None:
            w, p = got
            self._next_win += self._check_every - 1
            if p >= self.p_continue:
                self._unvoiced, self._voiced_end = 0, (w + 1) * WINDOW
            else:
                self._unvoiced += 1
                if self._unvoiced >= self._end_checks:
                    return self._end_speech(self._voiced_end / 8.0)
        return None

    def _run_bridge(self) -> None:
        """Silero on a pause in the caller's speech: a window still likely speech keeps the
        turn open (words apart in stationary noise), for at most ``_bridge_max`` windows."""
        gap = (self._j - self._below) * STEP
        while self._bridged < self._bridge_cap and (
                got := self._next_probability()) is not None:
            w, p = got
            if (w + 1) * WINDOW > gap:
                self._bridged += 1
                if p >= self.p_continue:
                    self._below = 0


"""Caller voice-activity detector: frame energy over an adaptive noise floor, with hangover.

Streaming and chunk-size independent: input of any length is cut into fixed steps
(``step_ms``, default 10 ms) and the decisions depend only on the sample stream. The noise
floor is the minimum frame level over the last ``floor_window_ms`` (minimum statistics):
it follows a changing background within that window, and the gaps between syllables keep it
down during speech. Speech starts after ``start_frames`` consecutive steps at least
``threshold_db`` above the floor (and above ``min_level_dbfs``); it ends after
``hangover_ms`` of steps below ``threshold_db - hysteresis_db``. Why energy and not a model:
docs/adr/0011-caller-vad.md.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from .framing import SampleFramer

__all__ = ["EnergyVad", "VadTransition"]

_SILENCE_DB = -100.0  # level given to digital silence, so the floor stays finite


@dataclass(frozen=True, slots=True)
class VadTransition:
    """A speech start or end.

    ``t_ms`` is the stream time of the event itself (the onset of the first loud step; the
    end of the last loud step); ``decided_ms`` is the stream time at which the detector had
    seen enough audio to say so (``t_ms`` plus the detection delay).
    """

    kind: Literal["start", "end"]
    t_ms: float
    decided_ms: float | None = None


class EnergyVad:
    """Energy VAD; feed ``process`` int16 or float32 (full scale 1.0) mono samples."""

    def __init__(
        self,
        sample_rate: int = 8000,
        threshold_db: float = 9.0,
        hangover_ms: int = 300,
        *,
        step_ms: int = 10,
        start_frames: int = 2,
        hysteresis_db: float = 3.0,
        floor_window_ms: int = 1500,
        min_level_dbfs: float = -55.0,
    ) -> None:
        if sample_rate <= 0 or (sample_rate * step_ms) % 1000:
            raise ValueError(f"step_ms {step_ms} is not a whole number of samples at {sample_rate}")
        if not 5 <= step_ms <= 30:
            raise ValueError(f"step_ms must be 5 to 30, got {step_ms}")
        if threshold_db < 0 or hangover_ms < 0 or start_frames < 1 or floor_window_ms < step_ms:
            raise ValueError("threshold_db, hangover_ms >= 0; start_frames >= 1; "
                             "floor_window_ms >= step_ms")
        self.sample_rate = sample_rate
        self.threshold_db = threshold_db
        self.hangover_ms = hangover_ms
        self.step_ms = step_ms
        self.start_frames = start_frames
        self.hysteresis_db = hysteresis_db
        self.min_level_dbfs = min_level_dbfs
        self._step = sample_rate * step_ms // 1000
        self._framer = SampleFramer(self._step, np.float64)
        # Minimum statistics in blocks of 10 steps: the floor is the minimum of the finished
        # blocks in the window and the running block, an O(1)-ish update per step.
        self._block_steps = 10
        self._blocks: deque[float] = deque(maxlen=max(1, floor_window_ms // (step_ms * 10)))
        self._hang_steps = max(1, math.ceil(hangover_ms / step_ms))
        self.reset()

    def reset(self) -> None:
        self._framer.flush(pad=False)
        self._blocks.clear()
        self._block_min = math.inf
        self._block_n = 0
        self._step_index = 0
        self._above = 0
        self._below = 0
        self._last_loud = 0
        self.speaking = False
        self.level_db = _SILENCE_DB
        self.noise_floor_db = _SILENCE_DB

    def process(self, samples: NDArray[np.int16] | NDArray[np.float32]) -> list[VadTransition]:
        """Feed audio; return the transitions it completes, in order."""
        if not isinstance(samples, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(samples).__name__}")
        if samples.dtype == np.int16:
            x = samples.astype(np.float64) / 32768.0
        elif samples.dtype == np.float32:
            x = samples.astype(np.float64)
        else:
            raise TypeError(f"expected int16 or float32 samples, got dtype {samples.dtype}")
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D (mono) array, got shape {samples.shape}")
        frames = self._framer.push(x)
        if not frames:
            return []
        power = np.mean(np.square(np.stack(frames)), axis=1)
        levels = 10.0 * np.log10(np.maximum(power, 10.0 ** (_SILENCE_DB / 10)))
        out: list[VadTransition] = []
        for level in levels.tolist():
            t = self._step_frame(level)
            if t is not None:
                out.append(t)
        return out

    def _step_frame(self, level: float) -> VadTransition | None:
        j = self._step_index
        self._step_index += 1
        self.level_db = level
        self._block_min = min(self._block_min, level)
        self._block_n += 1
        floor = min(self._block_min, min(self._blocks, default=math.inf))
        if self._block_n == self._block_steps:
            self._blocks.append(self._block_min)
            self._block_min, self._block_n = math.inf, 0
        self.noise_floor_db = floor
        step = self.step_ms
        loud = level >= floor + self.threshold_db and level >= self.min_level_dbfs
        if not self.speaking:
            self._above = self._above + 1 if loud else 0
            if self._above >= self.start_frames:
                self.speaking = True
                self._below = 0
                self._last_loud = j
                return VadTransition("start", (j - self._above + 1) * step, (j + 1) * step)
            return None
        quiet = level < floor + self.threshold_db - self.hysteresis_db
        if quiet:
            self._below += 1
            if self._below >= self._hang_steps:
                self.speaking = False
                self._above = 0
                return VadTransition("end", (self._last_loud + 1) * step, (j + 1) * step)
        else:
            self._below = 0
            self._last_loud = j
        return None

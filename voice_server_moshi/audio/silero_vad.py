"""``"silero"``: Silero VAD v6 alone, streaming at 8 kHz, with its own start/end rule.

The rule is Silero's ``VADIterator`` default: speech starts at the first 32 ms window with
probability >= 0.5, and ends once windows stay below 0.35 for ``hangover_ms`` (300 ms, as
the energy VAD). Input at another rate is resampled to 8 kHz first. The reference learned
VAD of ADR 0085: every window runs the model (about 5 ms of CPU per call-second).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .resample import Resampler
from .silero import RATE, WINDOW, SileroProb
from .vad import VadTransition

__all__ = ["SileroVad", "as_float32"]

WINDOW_MS = 1000.0 * WINDOW / RATE


class SileroVad:
    """Feed ``process`` int16 or float32 mono samples at ``sample_rate``."""

    def __init__(self, sample_rate: int = 8000, hangover_ms: int = 300, *,
                 threshold: float = 0.5, neg_threshold: float = 0.35) -> None:
        if not 0 < neg_threshold <= threshold < 1:
            raise ValueError("need 0 < neg_threshold <= threshold < 1")
        self.sample_rate = sample_rate
        self.hangover_ms = hangover_ms
        self.threshold = threshold
        self.neg_threshold = neg_threshold
        self._resampler = Resampler(sample_rate, RATE) if sample_rate != RATE else None
        self._model = SileroProb()
        self._win = 0
        self.speaking = False
        self._last_loud_ms = 0.0
        self.probabilities: list[float] = []  # kept only when ``keep_probabilities``
        self.keep_probabilities = False

    def process(self, samples: NDArray[np.int16] | NDArray[np.float32]) -> list[VadTransition]:
        x = as_float32(samples)
        if self._resampler is not None:
            x = np.asarray(self._resampler.process(x), dtype=np.float32)
        out: list[VadTransition] = []
        for p in self._model.push(x):
            t0 = self._win * WINDOW_MS
            self._win += 1
            t1 = self._win * WINDOW_MS
            if self.keep_probabilities:
                self.probabilities.append(p)
            if not self.speaking:
                if p >= self.threshold:
                    self.speaking = True
                    self._last_loud_ms = t1
                    out.append(VadTransition("start", t0, t1))
            elif p >= self.neg_threshold:
                self._last_loud_ms = t1
            elif t1 - self._last_loud_ms >= self.hangover_ms:
                self.speaking = False
                out.append(VadTransition("end", self._last_loud_ms, t1))
        return out


def as_float32(samples: NDArray[np.int16] | NDArray[np.float32]) -> NDArray[np.float32]:
    """int16 or float32 mono samples as float32 (full scale 1.0); a clear error otherwise."""
    if not isinstance(samples, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(samples).__name__}")
    if samples.ndim != 1:
        raise ValueError(f"expected a 1-D (mono) array, got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) * np.float32(1 / 32768)
    if samples.dtype == np.float32:
        out: NDArray[np.float32] = samples.astype(np.float32, copy=False)
        return out
    raise TypeError(f"expected int16 or float32 samples, got dtype {samples.dtype}")

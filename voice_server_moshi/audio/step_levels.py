"""10 ms steps at 8 kHz and their levels: the cascade VAD's unit of time (ADR 0085), and
:class:`LevelRing`, the levels of the agent audio sent by the step it was sent at."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from .framing import SampleFramer
from .resample import Resampler

__all__ = ["STEP", "STEP_MS", "LevelRing", "step_levels", "whole_steps"]

STEP = 80  # 10 ms at 8 kHz
STEP_MS = 10.0
F32 = NDArray[np.float32]


def step_levels(x: F32) -> list[float]:
    """dBFS of each 10 ms step of ``x`` (a whole number of steps); a few steps per call, so
    one einsum and scalar logs beat numpy's per-call overhead."""
    r = x.reshape(-1, STEP)
    power: list[float] = np.einsum("ij,ij->i", r, r).tolist()
    return [10.0 * math.log10(max(p / STEP, 1e-10)) for p in power]


def whole_steps(framer: SampleFramer, x: F32) -> F32 | None:
    """Whole 10 ms steps of ``x`` and what the framer held; the framer only when needed."""
    if framer.pending == 0 and len(x) % STEP == 0:
        return x if len(x) else None
    frames = framer.push(x)
    return np.concatenate(frames) if frames else None


class LevelRing:
    """Levels of audio (the agent's, as sent) by the 10 ms caller step it arrived at, for the
    last ``size`` steps (1024: about 10 s); input at another rate is resampled to 8 kHz."""

    def __init__(self, sample_rate: int, size: int = 1024) -> None:
        self._rs = Resampler(sample_rate, 8000) if sample_rate != 8000 else None
        self._framer = SampleFramer(STEP, np.float32)
        self._ring = np.full(size, -100.0)
        self.pos = 0  # the step after the newest level

    def push(self, x: F32, step: int) -> None:
        """Place ``x``'s levels from caller step ``step`` on, after any already placed."""
        if self._rs is not None:
            x = np.asarray(self._rs.process(x), dtype=np.float32)
        steps = whole_steps(self._framer, x)
        if steps is None:
            return
        pos, n = max(self.pos, step), len(self._ring)
        for level in step_levels(steps):
            self._ring[pos % n] = level
            pos += 1
        self.pos = pos

    def max(self, first: int, last: int) -> float:
        """The loudest level in steps [first, last] still held (-100 dB if none)."""
        n = len(self._ring)
        lo, hi = max(0, first, self.pos - n + 1), min(last, self.pos - 1)
        if hi < lo:
            return -100.0
        a, b = lo % n, hi % n
        seg = self._ring[a : b + 1] if a <= b else np.concatenate((self._ring[a:],
                                                                  self._ring[: b + 1]))
        return float(seg.max())

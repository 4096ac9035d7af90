"""10 ms steps at 8 kHz and their levels: the cascade VAD's unit of time (ADR 0085)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from .framing import SampleFramer

__all__ = ["STEP", "STEP_MS", "step_levels", "whole_steps"]

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

"""Active speech level in the manner of ITU-T P.56 (method B), for setting corpus levels.

The level of speech is its mean power over the time it is *active*, not over pauses: an RMS
over a whole clip or call drops with every pause, so two talkers at the same RMS are not
equally loud, and an SNR set by RMS depends on the speaking rate. P.56 method B: the
envelope is |x| smoothed twice by a 30 ms one-pole filter; a sample is active while the
envelope is at or above a threshold ``c``, or was within the last 200 ms (hangover); for
thresholds ``c`` a factor of 2 apart, the active level ``A(c)`` is the mean square over the
active samples; the speech's active level is the ``A`` at which ``A - C`` (``C`` the
threshold in dB) equals the margin ``M`` = 15.9 dB, interpolated between thresholds.
Offline only (numpy and a plain loop over samples; a few ms per second of audio).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["MARGIN_DB", "active_level_db"]

#: P.56's margin between the active level and the threshold that defines activity.
MARGIN_DB = 15.9
_TIME_CONSTANT_S = 0.03
_HANGOVER_S = 0.2


def _envelope(x: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    g = math.exp(-1.0 / (rate * _TIME_CONSTANT_S))
    p = q = 0.0
    out = np.empty(len(x))
    for i, v in enumerate(np.abs(x).tolist()):
        p = g * p + (1 - g) * v
        q = g * q + (1 - g) * p
        out[i] = q
    return out


def active_level_db(x: npt.NDArray[np.floating], rate: int = 8000) -> float:
    """The active speech level of ``x`` (full scale 1.0) in dB relative to a full-scale
    square wave (mean square 1.0: the scale of the corpus's dBFS levels). Raises
    ``ValueError`` on audio with no activity at all (digital silence)."""
    s = np.asarray(x, dtype=np.float64)
    if s.ndim != 1 or not len(s):
        raise ValueError("active_level_db needs a non-empty 1-D array")
    energy = float(np.sum(s * s))
    q = _envelope(s, rate)
    hang = max(1, round(_HANGOVER_S * rate))
    prev: tuple[float, float] | None = None  # (A - C, A) at the next higher threshold
    for j in range(0, 16):
        c = 2.0 ** -j
        above = np.concatenate(([0], np.cumsum(q >= c)))
        # Active: the envelope reached c at some sample within the last ``hang`` samples.
        lo = np.maximum(np.arange(1, len(s) + 1) - hang, 0)
        active = int(np.count_nonzero(above[1:] - above[lo] > 0))
        if active == 0:
            continue
        a_db = 10 * math.log10(energy / active)
        diff = a_db - 20 * math.log10(c)
        if diff >= MARGIN_DB:
            if prev is None:
                return a_db
            # Linear interpolation in dB between this threshold and the one above it.
            d0, a0 = prev
            w = (MARGIN_DB - d0) / (diff - d0) if diff != d0 else 0.0
            return a0 + w * (a_db - a0)
        prev = (diff, a_db)
    if prev is None:
        raise ValueError("no speech activity in the signal (digital silence?)")
    return prev[1]

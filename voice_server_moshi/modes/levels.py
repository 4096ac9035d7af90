"""Frame levels in dBFS, from the call's wire format."""

from __future__ import annotations

import math

import numpy as np

from ..audio import g711

#: Level reported for digital silence (log of zero).
SILENCE_DBFS = -120.0


def pcm_level_dbfs(pcm: np.ndarray) -> float:  # type: ignore[type-arg]
    """RMS level of int16 (or float in [-1, 1]) samples, in dB relative to full scale.

    The frame's mean is removed first: a DC offset is inaudible through a telephone (the
    band starts at 300 Hz) and must not count as speech.
    """
    if pcm.size == 0:
        return SILENCE_DBFS
    x = pcm.astype(np.float64)
    if pcm.dtype == np.int16:
        x /= 32768.0
    x -= x.mean()
    rms = math.sqrt(float(np.mean(x * x)))
    return max(SILENCE_DBFS, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DBFS


def frame_level_dbfs(audio: bytes, encoding: str) -> float:
    """Level of one frame of wire audio (pcm16 / mulaw / alaw)."""
    return pcm_level_dbfs(g711.decode(audio, encoding))


def silence_frame(encoding: str, samples: int) -> bytes:
    """One frame of digital silence in ``encoding`` (G.711 silence is not zero bytes)."""
    return g711.encode(np.zeros(samples, dtype=np.int16), encoding)

"""Packet-loss concealment for telephone speech, after ITU-T G.711 Appendix I.

A missing caller frame is replaced by the last pitch period of the audio before it,
repeated (the waveform keeps its pitch and timbre instead of dropping to silence, which a
VAD would hear as the end of a word), attenuated linearly by 20 % per 10 ms after the first
10 ms and muted after 60 ms, as the appendix does. When real audio comes back, its first
few milliseconds are cross-faded with the continued synthetic signal so there is no click.

Simplified from the appendix in two ways, both on purpose: one pitch period is repeated for
the whole erasure (the appendix widens to two and three periods after 10 and 20 ms; on a
vocoder-free 8 kHz call the difference is below what a VAD or Moshi's encoder can hear),
and the pitch search runs on the raw signal at full rate (the appendix decimates by 2 to
save a 1999 DSP's cycles; it runs once per erasure). Any of the call's rates works: the
appendix's 8 kHz constants are kept in milliseconds.

Pure and I/O-free: ``int16`` arrays in, ``int16`` arrays out.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["ATTENUATION_PER_10MS", "MAX_CONCEAL_MS", "Concealer"]

#: Pitch periods searched: 5 to 15 ms (66-200 Hz), the appendix's range.
_MIN_PITCH_MS: Final = 5.0
_MAX_PITCH_MS: Final = 15.0
#: Correlation window for the pitch search: the last 20 ms.
_CORR_MS: Final = 20.0
#: Cross-fade at the recovery: 4 ms.
_RECOVER_MS: Final = 4.0
ATTENUATION_PER_10MS: Final = 0.2
MAX_CONCEAL_MS: Final = 60.0

Pcm = NDArray[np.int16]


class Concealer:
    """Keeps the recent caller audio; makes concealment frames when the caller's are missing.

    Call :meth:`good` with every real frame (in order) and :meth:`conceal` for every frame
    that is missing; ``conceal`` returns zeros once ``max_ms`` of erasure have passed.
    """

    def __init__(self, rate: int = 8000, max_ms: float = MAX_CONCEAL_MS) -> None:
        self.rate = rate
        ms = rate / 1000
        self.max_samples = int(max_ms * ms)
        self._min_pitch = int(_MIN_PITCH_MS * ms)
        self._max_pitch = int(_MAX_PITCH_MS * ms)
        self._corr = int(_CORR_MS * ms)
        self._recover = int(_RECOVER_MS * ms)
        self._keep = self._max_pitch + self._corr
        self._history: NDArray[np.float64] = np.zeros(self._keep)
        self._period: NDArray[np.float64] | None = None  # the period being repeated
        self._pos = 0  # next sample of the period
        self._erased = 0  # samples concealed in the current erasure
        self._heard = False

    @property
    def concealing(self) -> bool:
        return self._erased > 0

    def good(self, pcm: Pcm) -> Pcm:
        """A real frame: returned as is, or cross-faded in after an erasure."""
        x = pcm.astype(np.float64)
        out = pcm
        if self._erased and self._period is not None and self._erased < self.max_samples:
            n = min(self._recover, x.size)
            tail = self._synth(n) * self._gain(self._erased, n)
            ramp = np.arange(1, n + 1) / (n + 1)
            x[:n] = tail * (1 - ramp) + x[:n] * ramp
            out = np.clip(np.round(x), -32768, 32767).astype(np.int16)
        self._erased = 0
        self._period = None
        self._heard = True
        self._remember(out.astype(np.float64))
        return out

    def conceal(self, samples: int) -> Pcm:
        """``samples`` of concealment for a missing frame (zeros before any real audio)."""
        if not self._heard or self._erased >= self.max_samples:
            self._erased += samples
            return np.zeros(samples, dtype=np.int16)
        if self._period is None:
            self._period = self._history[-self._pitch():].copy()
            self._pos = 0
        y = self._synth(samples) * self._gain(self._erased, samples)
        self._erased += samples
        out = np.clip(np.round(y), -32768, 32767).astype(np.int16)
        # Concealment is history too: a long erasure keeps repeating what was played.
        self._remember(out.astype(np.float64))
        return out

    # -- internals ----------------------------------------------------------------------

    def _remember(self, x: NDArray[np.float64]) -> None:
        self._history = np.concatenate([self._history, x])[-self._keep :]

    def _pitch(self) -> int:
        """The period (samples) whose lag best matches the last 20 ms (normalised
        cross-correlation over 5-15 ms lags)."""
        h = self._history
        ref = h[-self._corr :]
        best, best_lag = -np.inf, self._min_pitch
        energy_ref = float(ref @ ref)
        if energy_ref <= 0:
            return self._min_pitch
        for lag in range(self._min_pitch, self._max_pitch + 1):
            seg = h[-self._corr - lag : -lag]
            e = float(seg @ seg)
            if e <= 0:
                continue
            c = float(ref @ seg) / np.sqrt(e * energy_ref)
            if c > best:
                best, best_lag = c, lag
        return best_lag

    def _synth(self, n: int) -> NDArray[np.float64]:
        assert self._period is not None
        p = self._period
        idx = (self._pos + np.arange(n)) % p.size
        self._pos = int((self._pos + n) % p.size)
        out: NDArray[np.float64] = p[idx]
        return out

    def _gain(self, start: int, n: int) -> NDArray[np.float64]:
        """Per-sample gain for erasure samples ``start .. start + n``: 1 for the first
        10 ms, then down 20 % per 10 ms, 0 from ``max_samples`` on."""
        t = (start + np.arange(n)) / (self.rate / 100)  # in units of 10 ms
        g = 1.0 - ATTENUATION_PER_10MS * np.maximum(0.0, t - 1.0)
        g[start + np.arange(n) >= self.max_samples] = 0.0
        return np.clip(g, 0.0, 1.0)

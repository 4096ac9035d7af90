"""Streaming low-latency rational resampler (polyphase FIR, designed here in numpy).

Why not ``soxr.ResampleStream``: it hides its filter's group delay by withholding output
(on 8k<->24k in 20 ms chunks, 43 ms on average at HQ, 84 ms at VHQ). Telephony audio
carries nothing above 4 kHz, so a short linear-phase filter is enough, and it can emit
every output sample the moment the input that it depends on has arrived. See
docs/adr/0010-low-latency-resampler.md.

Sample accounting (the contract the tests check): after ``N`` input samples in total, over
any chunking, ``process`` has returned exactly ``ceil(N * L / M)`` samples (``L/M`` =
``out_rate/in_rate`` in lowest terms) and they are bit-identical to a one-shot call. ``flush``
then returns the filter's tail, ``ceil((N * L + D) / M) - ceil(N * L / M)`` samples where
``D`` is the group delay in samples at the rate ``in_rate * L``, and resets the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

__all__ = ["SUPPORTED_RATES", "FilterSpec", "Resampler", "design_filter", "response_db"]

SUPPORTED_RATES: Final = (8000, 16000, 24000, 48000)

#: Passband and stopband edges as fractions of the lower of the two rates. For 8 kHz this is
#: 3400 Hz and 4600 Hz: the telephone band is kept, and everything that could fold onto it
#: (images when going up, aliases when going down) is rejected.
PASS_FRACTION: Final = 0.425
STOP_FRACTION: Final = 0.575


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """The designed prototype filter (at ``in_rate * up``) of one rate pair."""

    up: int
    down: int
    rate: int  # the rate the prototype runs at: in_rate * up
    taps: NDArray[np.float64]  # gain ``up`` at DC, odd length, symmetric
    pass_hz: float
    stop_hz: float

    @property
    def delay_samples(self) -> int:
        """Group delay in samples at ``rate`` (linear phase, odd length: an integer)."""
        return (len(self.taps) - 1) // 2

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.delay_samples / self.rate


#: Design targets, with margin inside the goals (ripple <= 0.5 dB, rejection >= 60 dB).
PASS_RIPPLE = 0.025  # +-0.22 dB
STOP_RIPPLE = 5e-4  # -66 dB; up to four images of one tone add up to ~6 dB more


def _minimax_lowpass(
    n: int, rate: float, pass_hz: float, stop_hz: float, iterations: int = 100
) -> NDArray[np.float64]:
    """Linear-phase (type I) low-pass of ``n`` taps, near-minimax by Lawson's iteratively
    reweighted least squares, weighted so the passband may ripple ``PASS_RIPPLE`` while the
    stopband is held to ``STOP_RIPPLE``. Trading the generous passband allowance for taps
    gives ~35% fewer taps (and less delay) than a Kaiser window of the same rejection.
    """
    half = (n - 1) // 2
    fp = np.linspace(0.0, pass_hz, 400)
    fs = np.linspace(stop_hz, rate / 2, 1600)
    grid = np.concatenate((fp, fs)) / rate
    want = np.concatenate((np.ones(len(fp)), np.zeros(len(fs))))
    weight = np.concatenate((np.full(len(fp), 1 / PASS_RIPPLE), np.full(len(fs), 1 / STOP_RIPPLE)))
    basis = np.cos(2 * np.pi * np.outer(grid, np.arange(half + 1)))
    lw = np.full(len(grid), 1.0 / len(grid))
    coef = np.zeros(half + 1)
    for _ in range(iterations):
        w2 = lw * weight**2
        # Normal equations: the cosine basis on a dense grid is well conditioned, and this is
        # ~10x faster than an SVD least-squares solve.
        coef = np.linalg.solve(basis.T @ (basis * w2[:, None]), basis.T @ (want * w2))
        err = np.abs(basis @ coef - want) * weight
        lw = lw * err
        lw /= lw.sum()
    taps = np.concatenate((coef[:0:-1] / 2, coef[:1], coef[1:] / 2))
    return taps


@lru_cache(maxsize=32)
def design_filter(in_rate: int, out_rate: int) -> FilterSpec:
    """The prototype low-pass for ``in_rate -> out_rate``, at ``lcm(in_rate, out_rate)``.

    Its length scales with that rate over the lower rate (2, 3 or 6 for the supported
    rates): 53 taps, 1.08 ms of delay, for 8k<->24k. Odd, so the delay is whole samples.
    """
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    rate = in_rate * up
    low = min(in_rate, out_rate)
    pass_hz, stop_hz = PASS_FRACTION * low, STOP_FRACTION * low
    if up == down == 1:
        return FilterSpec(1, 1, rate, np.ones(1), pass_hz, stop_hz)
    n = 2 * round(8.75 * rate / low) + 1
    # Zero-stuffing by ``up`` divides the level by ``up``: the filter restores it.
    h = up * _minimax_lowpass(n, rate, pass_hz, stop_hz)
    h.setflags(write=False)  # cached and shared by every resampler of this pair
    return FilterSpec(up, down, rate, h, pass_hz, stop_hz)


def response_db(spec: FilterSpec, points: int = 8192) -> tuple[float, float]:
    """(passband ripple dB, stopband attenuation dB) of ``spec``'s prototype, evaluated on a
    fine frequency grid: the design's own figures, next to the streaming measurements."""
    f = np.linspace(0.0, spec.rate / 2, points)
    k = np.arange(len(spec.taps)) - (len(spec.taps) - 1) / 2
    amp = np.cos(2 * np.pi * np.outer(f / spec.rate, k)) @ spec.taps / spec.up
    band = amp[f <= spec.pass_hz]
    stop = np.abs(amp[f >= spec.stop_hz])
    ripple = 20 * math.log10(float(band.max()) / float(band.min()))
    return ripple, -20 * math.log10(float(stop.max()))


class Resampler:
    """Causal streaming resampler ``in_rate -> out_rate`` (8000, 16000, 24000, 48000 Hz).

    ``process`` takes a 1-D ``int16`` or ``float32`` array and returns the same dtype; int16
    output is rounded and saturated. Nothing is withheld beyond the filter's own group delay
    (``latency_ms``, 1.08 ms for 8k<->24k).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        for r in (in_rate, out_rate):
            if r not in SUPPORTED_RATES:
                raise ValueError(f"unsupported sample rate {r}; expected one of {SUPPORTED_RATES}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.spec = design_filter(in_rate, out_rate)
        up, down = self.spec.up, self.spec.down
        self._up, self._down = up, down
        k = -(-len(self.spec.taps) // up)  # taps per phase
        padded = np.zeros(k * up)
        padded[: len(self.spec.taps)] = self.spec.taps
        # phases[p, m] = h[p + m * up]; reversed along m so that it lines up with an ascending
        # window of input samples ending at the newest one.
        self._phases: NDArray[np.float64] = np.ascontiguousarray(
            padded.reshape(k, up).T[:, ::-1]
        )
        self._k = k
        self._reset()

    def _reset(self) -> None:
        self._hist: NDArray[np.float64] = np.zeros(self._k - 1)
        self._n_in = 0
        self._n_out = 0
        self._dtype: np.dtype[np.int16] | np.dtype[np.float32] = np.dtype(np.float32)

    @property
    def latency_ms(self) -> float:
        """Designed added latency: the filter's group delay; no output is withheld."""
        return self.spec.latency_ms

    @property
    def samples_in(self) -> int:
        return self._n_in

    @property
    def samples_out(self) -> int:
        return self._n_out

    def expected_output(self, n_in: int) -> int:
        """How many samples ``process`` returns in total after ``n_in`` input samples."""
        return -(-n_in * self._up // self._down)

    def _run(self, x: NDArray[np.float64], limit: int | None = None) -> NDArray[np.float64]:
        up, down = self._up, self._down
        n_total = self._n_in + len(x)
        end = -(-n_total * up // down)
        if limit is not None:
            end = min(end, limit)
        buf = np.concatenate((self._hist, x))
        y: NDArray[np.float64]
        if end > self._n_out:
            # as_strided, not sliding_window_view: same view, without ~5 µs of checks a call.
            win = as_strided(buf, (len(buf) - self._k + 1, self._k), (buf.strides[0],) * 2,
                             writeable=False)
            # Multiply, then sum along the last axis: the summation order depends only on the
            # filter length, never on the chunk, so output is bit-identical over any chunking
            # (a BLAS matmul may pick its kernel by matrix size).
            first = self._n_out * down
            if down == 1 and first % up == 0 and (end - self._n_out) % up == 0:
                # Pure upsampling on whole input samples: every window makes ``up`` outputs.
                r0 = first // up - self._n_in
                w = win[r0 : r0 + (end - self._n_out) // up]
                y = np.add.reduce(w[:, None, :] * self._phases[None, :, :], axis=2).reshape(-1)
            elif up == 1:
                # Pure decimation: the windows needed are every ``down``-th one, a strided view.
                r0 = first - self._n_in
                w = win[r0 : r0 + (end - self._n_out - 1) * down + 1 : down]
                y = np.add.reduce(w * self._phases[0], axis=1)
            else:
                pos = np.arange(self._n_out, end) * down
                rows = pos // up - self._n_in  # window start (buf[0] is input n_in - (k-1))
                y = np.add.reduce(win[rows] * self._phases[pos % up], axis=1)
        else:
            y = np.zeros(0)
        if self._k > 1:
            self._hist = buf[len(buf) - (self._k - 1) :].copy()
        self._n_in = n_total
        self._n_out = end
        return y

    def _check(self, x: object) -> NDArray[np.int16] | NDArray[np.float32]:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(x).__name__}")
        if x.dtype not in (np.int16, np.float32):
            raise TypeError(f"expected int16 or float32 samples, got dtype {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D (mono) array, got shape {x.shape}")
        return x

    def _out(self, y: NDArray[np.float64]) -> NDArray[np.int16] | NDArray[np.float32]:
        if self._dtype == np.int16:
            return np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return y.astype(np.float32)

    def process(
        self, samples: NDArray[np.int16] | NDArray[np.float32]
    ) -> NDArray[np.int16] | NDArray[np.float32]:
        """Feed input; return every output sample that it makes computable."""
        x = self._check(samples)
        self._dtype = x.dtype
        if self._up == self._down == 1:
            self._n_in += len(x)
            self._n_out += len(x)
            return x.copy()
        return self._out(self._run(x.astype(np.float64)))

    def flush(self) -> NDArray[np.int16] | NDArray[np.float32]:
        """End the stream: return the filter's tail and reset to a fresh stream."""
        up, down = self._up, self._down
        target = -(-(self._n_in * up + self.spec.delay_samples) // down)
        zeros = np.zeros(-(-self.spec.delay_samples // up) + 1)
        tail = self._run(zeros, limit=target) if up != 1 or down != 1 else np.zeros(0)
        out = self._out(tail)
        self._reset()
        return out

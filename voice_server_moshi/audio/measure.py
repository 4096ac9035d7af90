"""Measurements of streaming audio paths, shared by ``bench audio`` and the tests.

Every figure is measured on the streaming path as it runs in a call: input in fixed chunks
(20 ms by default), output collected as it is returned. Pure numpy; no I/O.

* added latency = delay of the returned output against the ideal signal (cross-correlation
  peak, interpolated) + output that the stream has withheld (expected count minus count
  returned). A causal filter shows its group delay and withholds nothing; soxr streams show
  ~0 delay and withhold their filter delay.
* passband ripple = spread (max - min, dB) of the gain of pure tones over 300-3400 Hz.
* image rejection (up) = tone power over the power of everything else in the output, for
  tones in 300-3400 Hz (their images fall at 4.6 kHz and beyond).
* alias rejection (down) = passband tone power over output power, for input tones from
  4.6 kHz to the input Nyquist.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ResamplerQuality",
    "SoxrStream",
    "Stream",
    "added_latency_ms",
    "cpu_us_per_call",
    "measure_resampler",
    "stream_through",
    "tone_response",
]

F32 = NDArray[np.float32]

AMPLITUDE = 0.5
PASSBAND = (300.0, 3400.0)
STOP_FROM_HZ = 4600.0


class Stream(Protocol):
    def process(self, samples: Any) -> Any: ...
    def flush(self) -> Any: ...


class SoxrStream:
    """``soxr.ResampleStream`` behind the :class:`Stream` shape, for side-by-side figures."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        import soxr

        self._s = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)

    def process(self, samples: F32) -> F32:
        out: F32 = self._s.resample_chunk(samples)
        return out

    def flush(self) -> F32:
        out: F32 = self._s.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return out


def stream_through(stream: Stream, x: F32, chunk: int) -> F32:
    """Feed ``x`` in chunks of ``chunk`` samples; the output returned before any flush."""
    outs = [np.asarray(stream.process(x[i : i + chunk])) for i in range(0, len(x), chunk)]
    y: F32 = np.concatenate(outs).astype(np.float32) if outs else np.zeros(0, np.float32)
    return y


def _chirp(rate: int, seconds: float, f0: float, f1: float, pad_s: float) -> F32:
    """A Hann-tapered linear chirp, evaluated analytically at ``rate`` (so the ideal output
    at any rate is the same formula), followed by ``pad_s`` of silence."""
    n = int(rate * (seconds + pad_s))
    t = np.arange(n) / rate
    k = (f1 - f0) / seconds
    phase = 2 * np.pi * (f0 * t + 0.5 * k * t * t)
    env = np.where(t < seconds, np.sin(np.pi * np.minimum(t, seconds) / seconds) ** 2, 0.0)
    out: F32 = (AMPLITUDE * env * np.sin(phase)).astype(np.float32)
    return out


def added_latency_ms(
    make: Callable[[], Stream], in_rate: int, out_rate: int, chunk_ms: float = 20.0
) -> dict[str, float]:
    """Delay of the output against the ideal plus withheld output, in ms (see module doc)."""
    seconds, pad = 1.0, 0.3
    x = _chirp(in_rate, seconds, PASSBAND[0], PASSBAND[1], pad)
    ideal = _chirp(out_rate, seconds, PASSBAND[0], PASSBAND[1], pad).astype(np.float64)
    stream, chunk = make(), round(in_rate * chunk_ms / 1000)
    outs: list[F32] = []
    withheld: list[float] = []  # output owed but not yet returned, after each chunk
    n_out = 0
    for i in range(0, len(x), chunk):
        out = np.asarray(stream.process(x[i : i + chunk]), dtype=np.float32)
        outs.append(out)
        n_out += len(out)
        withheld.append(min(i + chunk, len(x)) * out_rate / in_rate - n_out)
    y = np.concatenate(outs).astype(np.float64)
    # Streams that emit in bursts (soxr) owe a varying amount: average it over the steady
    # state (after 300 ms), which is what the mean sample waits.
    steady = np.asarray(withheld[int(0.3 * 1000 / chunk_ms) :])
    n = len(ideal)
    y = np.pad(y, (0, max(0, n - len(y))))[:n]
    size = 2 * n
    r = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(ideal, size)), size)
    max_lag = int(0.2 * out_rate)
    lags = np.concatenate((np.arange(0, max_lag), np.arange(-max_lag, 0)))
    vals = np.concatenate((r[:max_lag], r[-max_lag:]))
    i = int(np.argmax(vals))
    lag = float(lags[i])
    if 0 < i < len(vals) - 1 and lags[i - 1] + 1 == lags[i] == lags[i + 1] - 1:
        a, b, c = vals[i - 1], vals[i], vals[i + 1]
        den = a - 2 * b + c
        if den != 0:
            lag += 0.5 * (a - c) / den  # parabolic peak interpolation
    delay_ms = float(1000.0 * lag / out_rate)
    withheld_ms = 1000.0 * float(np.mean(steady)) / out_rate
    return {
        "latency_ms": delay_ms + withheld_ms,
        "delay_ms": delay_ms,
        "withheld_ms": withheld_ms,
        "withheld_max_ms": 1000.0 * float(np.max(steady)) / out_rate,
    }


def tone_response(
    make: Callable[[], Stream], in_rate: int, out_rate: int, freq: float, chunk_ms: float = 20.0
) -> tuple[float, float]:
    """Stream a pure tone; return (gain dB at ``freq``, output power dB relative to input
    tone power). Both are read on the steady-state part of the output."""
    seconds = 0.4
    t = np.arange(int(in_rate * seconds)) / in_rate
    x = (AMPLITUDE * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    y = stream_through(make(), x, round(in_rate * chunk_ms / 1000)).astype(np.float64)
    # Skip 150 ms (covers soxr VHQ's 75 ms withheld start plus settling) and the last 10 ms.
    a, b = int(0.15 * out_rate), len(y) - int(0.01 * out_rate)
    seg = y[a:b]
    ref_power = AMPLITUDE**2 / 2
    power = float(np.mean(seg**2))
    if freq < out_rate / 2:
        tt = np.arange(a, b) / out_rate
        basis = np.stack((np.cos(2 * np.pi * freq * tt), np.sin(2 * np.pi * freq * tt)), axis=1)
        coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
        amp = float(np.hypot(coef[0], coef[1]))
        resid = float(np.mean((seg - basis @ coef) ** 2))
        gain_db = 20 * np.log10(max(amp, 1e-12) / AMPLITUDE)
        other_db = 10 * np.log10(max(resid, 1e-30) / ref_power)
        return float(gain_db), float(other_db)
    return float("nan"), float(10 * np.log10(max(power, 1e-30) / ref_power))


@dataclass(frozen=True, slots=True)
class ResamplerQuality:
    latency_ms: float
    delay_ms: float
    withheld_ms: float
    withheld_max_ms: float
    passband_ripple_db: float
    passband_gain_db_min: float
    passband_gain_db_max: float
    #: up: images; down: aliases. Worst case over the tones measured, dB.
    rejection_db: float
    rejection_worst_hz: float
    tones: int

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in asdict(self).items()}


def measure_resampler(
    make: Callable[[], Stream],
    in_rate: int,
    out_rate: int,
    step_hz: float = 50.0,
    chunk_ms: float = 20.0,
) -> ResamplerQuality:
    """Latency, passband ripple and image/alias rejection of one rate pair."""
    lat = added_latency_ms(make, in_rate, out_rate, chunk_ms)
    pass_tones = np.arange(PASSBAND[0], PASSBAND[1] + 1e-9, step_hz)
    gains, others = zip(
        *(tone_response(make, in_rate, out_rate, float(f), chunk_ms) for f in pass_tones),
        strict=True,
    )
    g = np.asarray(gains)
    if out_rate > in_rate:
        # Everything in the output but the tone itself is an image (at >= 8000 - 3400 Hz
        # for 8 kHz input), relative to the tone.
        rej = -(np.asarray(others) - g)
        freqs = pass_tones
    else:
        nyq = in_rate / 2
        freqs = np.arange(STOP_FROM_HZ, nyq - step_hz / 2, step_hz)
        powers = np.asarray(
            [tone_response(make, in_rate, out_rate, float(f), chunk_ms)[1] for f in freqs]
        )
        rej = -(powers - float(np.mean(g)))
    worst = int(np.argmin(rej))
    return ResamplerQuality(
        latency_ms=lat["latency_ms"],
        delay_ms=lat["delay_ms"],
        withheld_ms=lat["withheld_ms"],
        withheld_max_ms=lat["withheld_max_ms"],
        passband_ripple_db=float(g.max() - g.min()),
        passband_gain_db_min=float(g.min()),
        passband_gain_db_max=float(g.max()),
        rejection_db=float(rej[worst]),
        rejection_worst_hz=float(freqs[worst]),
        tones=len(pass_tones) + (0 if out_rate > in_rate else len(freqs)),
    )


def cpu_us_per_call(fn: Callable[[], object], calls: int = 500, repeats: int = 5) -> float:
    """Mean wall time of ``fn()`` in microseconds, best of ``repeats`` runs of ``calls``: the
    best run is the one least disturbed by other work on shared cores."""
    for _ in range(min(calls, 50)):
        fn()
    runs: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return float(min(runs))


def frames_of(x: F32, size: int) -> Sequence[F32]:
    return [x[i : i + size] for i in range(0, len(x) - size + 1, size)]

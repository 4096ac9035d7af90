"""Streaming resampler: exact accounting over any chunking, saturation, errors, and the
latency/quality goals measured by the same code as ``bench audio``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_server_moshi.audio.measure import measure_resampler
from voice_server_moshi.audio.resample import (
    SUPPORTED_RATES,
    Resampler,
    design_filter,
    response_db,
)

PAIRS = [(a, b) for a in SUPPORTED_RATES for b in SUPPORTED_RATES]


def _one_shot(a: int, b: int, x: np.ndarray) -> np.ndarray:
    r = Resampler(a, b)
    return np.concatenate([r.process(x), r.flush()])


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    dtype=st.sampled_from([np.int16, np.float32]),
    n=st.integers(0, 3000),
    cuts=st.lists(st.integers(0, 700), max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_chunking_gives_one_shot_output(pair, dtype, n, cuts, seed) -> None:
    a, b = pair
    rng = np.random.default_rng(seed)
    if dtype is np.int16:
        x = rng.integers(-32768, 32768, n).astype(np.int16)
    else:
        x = rng.uniform(-1, 1, n).astype(np.float32)
    r = Resampler(a, b)
    g = math.gcd(a, b)
    up, down = b // g, a // g
    parts, i, cut_iter = [r.process(x[:0])], 0, iter(cuts)  # empty first: sets the dtype
    while i < n:
        step = next(cut_iter, n - i)
        parts.append(r.process(x[i : i + step]))
        i = min(i + step, n)
        # After every call: exactly ceil(N * L / M) samples out in total.
        assert sum(len(p) for p in parts) == -(-i * up // down) == r.expected_output(i)
    tail = r.flush()
    delay = r.spec.delay_samples
    assert len(tail) == -(-(n * up + delay) // down) - -(-n * up // down)
    got = np.concatenate([*parts, tail])
    want = _one_shot(a, b, x)
    assert got.dtype == want.dtype == dtype
    assert np.array_equal(got, want)


def test_flush_resets_to_a_fresh_stream() -> None:
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 1000).astype(np.float32)
    r = Resampler(8000, 24000)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    assert np.array_equal(first, second)
    assert r.samples_in == 0 and r.samples_out == 0


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_every_pair_passes_a_1khz_tone_with_its_gain_and_delay(a: int, b: int) -> None:
    t = np.arange(a // 5) / a
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    r = Resampler(a, b)
    y = np.concatenate([r.process(x), r.flush()]).astype(np.float64)
    tt = np.arange(len(y)) / b - r.latency_ms / 1000  # undo the declared delay
    seg = slice(len(y) // 4, len(y) * 3 // 4)
    basis = np.stack([np.sin(2 * np.pi * 1000 * tt[seg]), np.cos(2 * np.pi * 1000 * tt[seg])], 1)
    (s, c), *_ = np.linalg.lstsq(basis, y[seg], rcond=None)
    assert abs(20 * np.log10(np.hypot(s, c) / 0.5)) <= 0.25  # within the passband ripple
    assert abs(np.arctan2(c, s)) < 2 * np.pi * 1000 * 20e-6  # delay right to 20 µs
    resid = y[seg] - basis @ np.array([s, c])
    assert 10 * np.log10(np.mean(resid**2) / 0.125) < -55  # nothing else: right rate


def test_design_meets_its_targets_at_every_ratio() -> None:
    for a, b in [(8000, 16000), (8000, 24000), (8000, 48000)]:
        ripple, atten = response_db(design_filter(a, b))
        assert ripple <= 0.5 and atten >= 60, (a, b, ripple, atten)


@pytest.mark.parametrize(("a", "b"), [(8000, 24000), (24000, 8000)])
def test_telephony_goals_measured(a: int, b: int) -> None:
    q = measure_resampler(lambda: Resampler(a, b), a, b, step_hz=100.0)
    assert q.latency_ms <= 2.0, q
    assert q.withheld_max_ms <= 0.0, q
    assert q.passband_ripple_db <= 0.5, q
    assert q.rejection_db >= 60.0, q
    # The declared latency is the measured one.
    assert abs(q.latency_ms - Resampler(a, b).latency_ms) < 0.05, q


@pytest.mark.parametrize(("a", "b"), [(8000, 24000), (24000, 8000)])
def test_int16_saturates_instead_of_wrapping(a: int, b: int) -> None:
    # A full-scale square wave makes the filter overshoot (Gibbs) past int16 range.
    n = a // 10
    sq = np.where((np.arange(n) // (a // 200)) % 2 == 0, 32767, -32768).astype(np.int16)
    yf = Resampler(a, b).process(sq.astype(np.float32)).astype(np.float64)
    yi = Resampler(a, b).process(sq)
    assert (yf > 32767.5).any() and (yf < -32768.5).any()  # the overshoot is there
    assert np.all(yi[yf > 32767.5] == 32767)
    assert np.all(yi[yf < -32768.5] == -32768)
    assert np.max(np.abs(yi - np.clip(yf, -32768, 32767))) <= 1.0


def test_empty_input_keeps_dtype() -> None:
    r = Resampler(8000, 24000)
    assert r.process(np.zeros(0, np.int16)).dtype == np.int16
    assert r.process(np.zeros(0, np.float32)).shape == (0,)


def test_bad_inputs_raise_clear_errors() -> None:
    r = Resampler(8000, 24000)
    with pytest.raises(TypeError, match="int16 or float32"):
        r.process(np.zeros(10, np.float64))
    with pytest.raises(TypeError, match="int16 or float32"):
        r.process(np.zeros(10, np.int32))
    with pytest.raises(ValueError, match="1-D"):
        r.process(np.zeros((2, 10), np.float32))
    with pytest.raises(TypeError, match="numpy"):
        r.process([0.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported sample rate"):
        Resampler(8000, 22050)

"""Caller VAD on synthetic signals with known onsets (no speech synthesis needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_server_moshi.audio.vad import EnergyVad, VadTransition

SR = 8000


def _noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(int(SR * seconds)) * 10 ** (dbfs / 20)


def _burst(seconds: float, dbfs: float, seed: int = 1) -> np.ndarray:
    """Speech-like: a 200 Hz harmonic series with a 4 Hz syllable envelope."""
    t = np.arange(int(SR * seconds)) / SR
    x = sum(np.sin(2 * np.pi * 200 * k * t + k) / k for k in range(1, 12))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2) ** 2
    x = x * env
    return x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20)


def _to16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)


def _scene(gaps_ms: list[int], noise_db: float = -50.0, speech_db: float = -25.0):
    """Noise bed with speech bursts; returns (int16 audio, [(onset_ms, offset_ms)])."""
    total = 1.0 + sum(0.8 + g / 1000 for g in gaps_ms) + 1.0
    x = _noise(total, noise_db)
    spans, t = [], 1.0
    for g in gaps_ms:
        b = _burst(0.8, speech_db)
        i = int(t * SR)
        x[i : i + len(b)] += b
        spans.append((t * 1000, (t + 0.8) * 1000))
        t += 0.8 + g / 1000
    return _to16(x), spans


def _run(vad: EnergyVad, x: np.ndarray, chunk: int = 160) -> list[VadTransition]:
    return [tr for i in range(0, len(x), chunk) for tr in vad.process(x[i : i + chunk])]


def test_onset_and_end_of_a_burst() -> None:
    x, [(on, off)] = _scene([1000])
    trs = _run(EnergyVad(), x)
    assert [t.kind for t in trs] == ["start", "end"]
    start, end = trs
    assert on <= start.t_ms <= on + 30
    assert start.decided_ms is not None and start.decided_ms - on <= 50
    assert abs(end.t_ms - off) <= 30
    assert end.decided_ms is not None and 300 <= end.decided_ms - end.t_ms <= 320


def test_hangover_bridges_short_gaps_only() -> None:
    x, _ = _scene([200, 600, 1000])  # 200 ms gap < 300 ms hangover < 600 ms gap
    kinds = [t.kind for t in _run(EnergyVad(), x)]
    assert kinds == ["start", "end", "start", "end"]
    assert [t.kind for t in _run(EnergyVad(hangover_ms=100), x)] == ["start", "end"] * 3


def test_chunk_size_independent_and_dtype_independent() -> None:
    x, _ = _scene([200, 600, 1000])
    ref = _run(EnergyVad(), x, 160)
    for chunk in (1, 80, 173, 240, 4000):
        assert _run(EnergyVad(), x, chunk) == ref
    assert _run(EnergyVad(), (x / 32768).astype(np.float32)) == ref


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 900), min_size=1, max_size=60))
def test_any_chunking_gives_the_same_transitions(chunks: list[int]) -> None:
    x, _ = _scene([400])
    ref = _run(EnergyVad(), x)
    vad, out, i = EnergyVad(), [], 0
    for n in chunks * (len(x) // sum(chunks) + 1):
        out += vad.process(x[i : i + n])
        i += n
        if i >= len(x):
            break
    assert out == ref


@pytest.mark.parametrize("noise_db", [-60.0, -45.0, -30.0])
def test_stationary_noise_alone_is_not_speech(noise_db: float) -> None:
    assert _run(EnergyVad(), _to16(_noise(5.0, noise_db, seed=7))) == []


def test_digital_silence_and_faint_hiss_are_not_speech() -> None:
    x = np.concatenate([np.zeros(SR, np.int16), _to16(_noise(2.0, -62.0))])
    assert _run(EnergyVad(), x) == []


def test_floor_adapts_to_a_louder_background() -> None:
    # The background steps up 20 dB at 1 s: at most one false start, which the adapting floor
    # ends; then speech 15 dB over the new background is found.
    x = np.concatenate([_noise(1.0, -55.0), _noise(4.0, -35.0, seed=5)])
    i = int(3.5 * SR)
    x[i : i + 8000] += _burst(1.0, -20.0)
    vad = EnergyVad()
    trs = _run(vad, _to16(x))
    starts = [t for t in trs if t.kind == "start"]
    assert starts and abs(starts[-1].t_ms - 3500) <= 30
    before = [t for t in trs if t.t_ms < 3400]
    assert len(before) <= 2
    if before:  # the false start is ended once the floor window has seen the new level
        end = before[-1]
        assert end.kind == "end" and end.decided_ms is not None
        assert end.decided_ms <= 1000 + 1500 + 300 + 100


def test_threshold_matters() -> None:
    # Speech as loud as the noise (+3 dB together): found at 3 dB threshold, not at 9 dB.
    x, _ = _scene([800], noise_db=-40.0, speech_db=-40.0)
    assert _run(EnergyVad(threshold_db=9.0), x) == []
    assert [t.kind for t in _run(EnergyVad(threshold_db=3.0), x)][:1] == ["start"]


def test_bad_inputs_raise_clear_errors() -> None:
    vad = EnergyVad()
    with pytest.raises(TypeError, match="int16 or float32"):
        vad.process(np.zeros(160, np.float64))
    with pytest.raises(ValueError, match="1-D"):
        vad.process(np.zeros((2, 160), np.int16))
    with pytest.raises(TypeError, match="numpy"):
        vad.process([0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step_ms"):
        EnergyVad(step_ms=50)
    with pytest.raises(ValueError):
        EnergyVad(threshold_db=-1)

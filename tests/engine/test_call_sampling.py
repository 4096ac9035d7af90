"""Per-call sampling settings: parsing and validation (torch-free)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_server_moshi.engine.call_sampling import (
    MAX_TOPK,
    RANGES,
    CallSampling,
    SamplingError,
    parse_sampling_query,
)


def test_defaults_are_kyutais() -> None:
    s = CallSampling()
    assert (s.text_temperature, s.text_topk, s.audio_temperature, s.audio_topk) == (
        0.7, 25, 0.8, 250)
    assert s.pad_mult == 0.0 and s.repetition_penalty == 1.0
    assert s.text_seed is None and s.audio_seed is None


def test_query_overrides_defaults_and_ignores_unknown_keys() -> None:
    q = {"text_temperature": "0.5", "audio_topk": "100", "text_seed": "42",
         "audio_seed": "18446744073709551615", "email": "x@y", "pad_mult": "-1.5"}
    s = parse_sampling_query(q, CallSampling())
    assert s.text_temperature == 0.5 and s.audio_topk == 100 and s.pad_mult == -1.5
    assert s.text_seed == 42 and s.audio_seed == (1 << 64) - 1
    assert s.text_topk == 25  # untouched default


@pytest.mark.parametrize(("key", "raw", "needle"), [
    ("text_temperature", "hot", "text_temperature must be a number"),
    ("text_temperature", "2.5", "text_temperature must be in [0, 2]"),
    ("text_temperature", "nan", "text_temperature must be"),
    ("audio_topk", "0", "audio_topk must be in [1, 500]"),
    ("audio_topk", "2.5", "audio_topk must be an integer"),
    ("repetition_penalty", "0.5", "repetition_penalty must be in [1, 3]"),
    ("repetition_penalty_context", "1000", "repetition_penalty_context must be in [0, 256]"),
    ("text_seed", "-1", "text_seed must be in [0, 18446744073709551615]"),
    ("pad_mult", "11", "pad_mult must be in [-10, 10]"),
])
def test_bad_values_are_named(key: str, raw: str, needle: str) -> None:
    with pytest.raises(SamplingError) as err:
        parse_sampling_query({key: raw}, CallSampling())
    assert needle in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SamplingError) as err:
        parse_sampling_query({"text_topk": "0", "audio_temperature": "x"}, CallSampling())
    assert "text_topk" in str(err.value) and "audio_temperature" in str(err.value)


def test_seeded_draws_missing_seeds_once() -> None:
    s = CallSampling(text_seed=7).seeded()
    assert s.text_seed == 7 and s.audio_seed is not None
    assert s.seeded() == s


def test_engine_defaults_map_greedy_and_topk() -> None:
    g = CallSampling.from_engine_defaults(False, 0.8, 0.7, 250, 25)
    assert g.greedy
    s = CallSampling.from_engine_defaults(True, 0.9, 0.6, 0, 5000)
    assert (s.audio_temperature, s.text_temperature) == (0.9, 0.6)
    assert s.audio_topk == MAX_TOPK and s.text_topk == MAX_TOPK


@given(st.sampled_from(sorted(RANGES)), st.floats(allow_nan=True, allow_infinity=True))
def test_parse_never_raises_anything_but_sampling_error(key: str, value: float) -> None:
    try:
        s = parse_sampling_query({key: repr(value)}, CallSampling())
    except SamplingError:
        return
    lo, hi = RANGES[key]
    assert lo <= getattr(s, key) <= hi

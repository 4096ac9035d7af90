"""The embedded transport takes Kyutai's per-call sampling settings like `serve` does."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine.call_sampling import CallSampling
from voice_server_moshi.errors import SettingsError
from voice_server_moshi.moshi.embedded import EmbeddedTransport
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.registry import load_registry


async def test_each_call_gets_its_own_sampling_on_one_shared_engine(
        dev_checkpoint: Path) -> None:
    # A context of its own: an engine of its own (other tests' shared engines have 1 slot).
    base = {"checkpoint": str(dev_checkpoint), "device": "cpu", "slots": 2, "context": 96}
    a = EmbeddedTransport(MoshiSettings(**base, text_temperature=0.3, audio_topk=40,
                                        text_seed=1, audio_seed=2, pad_mult=0.5))
    b = EmbeddedTransport(MoshiSettings(**base, repetition_penalty=1.5))
    await a.open("call-a")
    await b.open("call-b")
    try:
        assert a.call is not None and b.call is not None
        assert a.call.engine is b.call.engine  # sampling no longer splits engines
        sa, sb = a.call.slot.sampling, b.call.slot.sampling  # type: ignore[union-attr]
        assert isinstance(sa, CallSampling) and isinstance(sb, CallSampling)
        assert (sa.text_temperature, sa.audio_topk, sa.text_seed, sa.audio_seed,
                sa.pad_mult) == (0.3, 40, 1, 2, 0.5)
        d = a.call.engine.default_sampling
        assert sb.repetition_penalty == 1.5 and sb.text_temperature == d.text_temperature
        assert sb.text_seed is not None and sb.audio_seed is not None  # drawn per call
    finally:
        await a.close()
        await b.close()


def test_out_of_range_sampling_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as err:
        load_registry().create_adapter("moshi", {"text_topk": 0, "repetition_penalty": 7})
    assert "text_topk" in str(err.value) and "repetition_penalty" in str(err.value)

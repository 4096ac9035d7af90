"""The "cascade" (default) and "silero" VADs through the registry, and the light fallback."""

from __future__ import annotations

import logging

import pytest

from voice_server_moshi import learned_vads
from voice_server_moshi.audio.vad import EnergyVad
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.registry import load_registry
from voice_server_moshi.vads import AgentAudioSink, Vad, VadConfig


def test_cascade_is_the_default_and_both_learned_vads_are_registered() -> None:
    pytest.importorskip("onnxruntime")
    from voice_server_moshi.audio.cascade_vad import CascadeVad
    from voice_server_moshi.audio.silero_vad import SileroVad

    assert MoshiSettings().vad == "cascade"
    reg = load_registry()
    assert {"energy", "cascade", "silero"} <= set(reg.vads)
    cascade = reg.vad_factory("cascade")(VadConfig(8000, 9.0, 300))
    assert isinstance(cascade, CascadeVad) and isinstance(cascade, Vad)
    assert isinstance(cascade, AgentAudioSink)  # the adapter feeds it the echo reference
    assert isinstance(reg.vad_factory("silero")(VadConfig(8000)), SileroVad)
    assert isinstance(reg.vad_factory("energy")(VadConfig(8000)), EnergyVad)


def test_without_onnxruntime_the_learned_vads_fall_back_to_energy_with_a_note(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(learned_vads, "silero_available", lambda: False)
    learned_vads._warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING):
        a = learned_vads.cascade_vad(VadConfig(8000))
        b = learned_vads.silero_vad(VadConfig(8000))
    assert isinstance(a, EnergyVad) and isinstance(b, EnergyVad)
    assert "falls back to energy" in caplog.text and "onnxruntime" in caplog.text
    learned_vads._warn_fallback.cache_clear()

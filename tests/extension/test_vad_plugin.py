"""The caller-VAD extension point: a VAD from an inline plugin, chosen by ``vad = "name"``."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import numpy as np
import pytest
from numpy.typing import NDArray

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.errors import SettingsError
from voice_server_moshi.events import SpeechEnded, SpeechStarted
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.hookspecs import Register, hookimpl
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.registry import load_registry
from voice_server_moshi.settings import parse_settings
from voice_server_moshi.testing.scripted_transport import ScriptedTransport
from voice_server_moshi.vads import AgentAudioSink, Vad, VadConfig, VadTransition, energy_vad

MULAW = AudioFormat("mulaw", 8000, 20)


class EveryHalfSecond:
    """A VAD that knows nothing of speech: start at 0, end at 500 ms of caller audio.
    It records what it was fed, so the test sees the adapter's side of the contract."""

    made: ClassVar[list[EveryHalfSecond]] = []

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self.samples = 0
        self.dtypes: set[str] = set()
        self.agent_samples = 0
        EveryHalfSecond.made.append(self)

    def process(self, samples: NDArray[np.int16]) -> list[VadTransition]:
        self.dtypes.add(str(samples.dtype))
        before, self.samples = self.samples, self.samples + len(samples)
        ms = lambda n: 1000.0 * n / self.config.sample_rate  # noqa: E731
        out = []
        if before == 0:
            out.append(VadTransition("start", 0.0, ms(self.samples)))
        if before < self.config.sample_rate // 2 <= self.samples:
            out.append(VadTransition("end", 500.0, ms(self.samples)))
        return out

    def agent_audio(self, samples: NDArray[np.int16], t_ms: float) -> None:
        self.agent_samples += len(samples)


class HalfSecondPlugin:
    @hookimpl
    def voice_server_register_vads(self, register: Register) -> None:
        register("half-second", EveryHalfSecond, description="test VAD")


def test_protocols_hold_for_both_vads() -> None:
    assert isinstance(energy_vad(VadConfig(8000)), Vad)
    probe = EveryHalfSecond(VadConfig(8000))
    assert isinstance(probe, Vad) and isinstance(probe, AgentAudioSink)
    assert not isinstance(energy_vad(VadConfig(8000)), AgentAudioSink)


def test_energy_is_registered_and_unknown_names_list_the_registered() -> None:
    reg = load_registry(plugins=[HalfSecondPlugin()], blocked=[])
    assert {"energy", "half-second"} <= set(reg.vads)
    assert reg.vads["energy"].plugin == "moshi"
    with pytest.raises(SettingsError, match=r"no VAD named 'webrtc'; registered: cascade, "
                       r"energy, half-second, silero") as err:
        reg.create_adapter("moshi", {"url": "ws://127.0.0.1:9/api/chat", "vad": "webrtc"})
    assert err.value.section == "moshi"
    made = reg.create_adapter("moshi", {"url": "ws://127.0.0.1:9/api/chat", "vad": "half-second"})
    assert isinstance(made, MoshiAdapter)
    # Without the plugin the name is unknown, and said so.
    with pytest.raises(SettingsError, match="no VAD named 'half-second'"):
        MoshiAdapter(MoshiSettings(url="ws://127.0.0.1:9/api/chat", vad="half-second"))


async def test_settings_select_the_plugin_vad_and_the_adapter_uses_it() -> None:
    EveryHalfSecond.made.clear()
    reg = load_registry(plugins=[HalfSecondPlugin()], blocked=[])
    settings = parse_settings(MoshiSettings, {"transport": "embedded", "vad": "half-second"},
                              section="moshi")
    transport = ScriptedTransport()
    with reg.active():  # what registry.create_adapter does around the factory
        adapter = MoshiAdapter(settings, transport=transport)
    await adapter.connect(VoiceModelConfig(call_id="v1", audio=MULAW))
    events = []

    async def consume() -> None:
        async for e in adapter.events():
            events.append(e)

    task = asyncio.create_task(consume())
    chunk = g711.encode(np.zeros(160, np.int16), "mulaw")  # silence: energy would say nothing
    for _ in range(30):
        await adapter.send_audio(chunk)
    async with asyncio.timeout(10):
        while adapter.counters["chunks_out"] < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await adapter.disconnect()
    await asyncio.wait_for(task, 10)

    (vad,) = EveryHalfSecond.made
    assert vad.config == VadConfig(8000, 9.0, 300, "v1")
    assert vad.samples == 30 * 160 and vad.dtypes == {"int16"}
    assert vad.agent_samples >= 10 * 160  # the agent audio reached it as echo reference
    speech = [(type(e).__name__, e.t_ms) for e in events
              if isinstance(e, SpeechStarted | SpeechEnded)]
    assert speech == [("SpeechStarted", 0.0), ("SpeechEnded", 500.0)]

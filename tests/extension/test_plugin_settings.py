"""A plugin's caller VAD and Moshi transport take settings (``register(..., settings=Cls)``),
configured from the host's config: ``[moshi.vad_settings]`` and
``[moshi.transport_settings]``, parsed into the classes they registered and checked when
the adapter is made, with every problem named."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from voice_server_moshi import Connected, SettingsError, SpeechEnded, SpeechStarted
from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.hookspecs import Register, hookimpl
from voice_server_moshi.host.config import load_config
from voice_server_moshi.host.reference import ReferenceHost
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.registry import Registry, load_registry
from voice_server_moshi.testing.scripted_transport import ScriptedTransport
from voice_server_moshi.vads import VadConfig, VadTransition

MULAW = AudioFormat("mulaw", 8000, 20)


@dataclass(frozen=True, slots=True)
class GateSettings:
    end_ms: int = field(default=500, metadata={"min": 20, "max": 10000,
                                               "help": "caller stream time of the end"})


class Gate:
    """Speech from the first sample to ``end_ms`` of caller audio, whatever it hears."""

    def __init__(self, config: VadConfig, settings: GateSettings) -> None:
        self.rate = config.sample_rate
        self.end = settings.end_ms * config.sample_rate // 1000
        self.samples = 0

    def process(self, samples: NDArray[np.int16]) -> list[VadTransition]:
        before, self.samples = self.samples, self.samples + len(samples)
        now = 1000.0 * self.samples / self.rate
        out = [VadTransition("start", 0.0, now)] if before == 0 else []
        if before < self.end <= self.samples:
            out.append(VadTransition("end", 1000.0 * self.end / self.rate, now))
        return out


@dataclass(frozen=True, slots=True)
class EchoSettings:
    session_id: str = field(default="echo", metadata={"help": "what open() returns"})
    delay_frames: int = field(default=0, metadata={"min": 0, "max": 50, "help": "echo lag"})


made: list[tuple[MoshiSettings, EchoSettings]] = []


def echo_transport(settings: MoshiSettings, own: EchoSettings) -> ScriptedTransport:
    made.append((settings, own))
    return ScriptedTransport(session_id=own.session_id, delay_frames=own.delay_frames)


class SettingsPlugin:
    @hookimpl
    def voice_server_register_vads(self, register: Register) -> None:
        register("gate", Gate, settings=GateSettings, description="test VAD")

    @hookimpl
    def voice_server_register_moshi_transports(self, register: Register) -> None:
        register("echo", echo_transport, settings=EchoSettings, description="test transport")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(plugins=[SettingsPlugin()], blocked=[])


HOST_TOML = """
adapter = "moshi"

[moshi]
transport = "echo"
vad = "gate"
stall_fill_ms = 500

[moshi.vad_settings]
end_ms = 300

[moshi.transport_settings]
session_id = "from-host-config"
delay_frames = 2
"""


async def test_host_config_configures_the_plugin_vad_and_transport(
        registry: Registry, tmp_path: Path) -> None:
    made.clear()
    path = tmp_path / "host.toml"
    path.write_text(HOST_TOML)
    adapter = ReferenceHost(load_config(path), registry=registry).make_adapter()
    assert isinstance(adapter, MoshiAdapter)
    await adapter.connect(VoiceModelConfig(call_id="ps1", audio=MULAW))
    events = []

    async def consume() -> None:
        async for e in adapter.events():
            events.append(e)

    task = asyncio.create_task(consume())
    for _ in range(30):  # 600 ms of silence: only the configured gate says speech
        await adapter.send_audio(g711.encode(np.zeros(160, np.int16), "mulaw"))
    await adapter.disconnect()
    await asyncio.wait_for(task, 10)

    ((settings, own),) = made
    assert own == EchoSettings("from-host-config", 2)
    assert settings.transport_settings == {"session_id": "from-host-config", "delay_frames": 2}
    assert [e.session_id for e in events if isinstance(e, Connected)] == ["from-host-config"]
    speech = [(type(e).__name__, e.t_ms) for e in events
              if isinstance(e, SpeechStarted | SpeechEnded)]
    assert speech == [("SpeechStarted", 0.0), ("SpeechEnded", 300.0)]


def test_defaults_apply_without_a_table(registry: Registry) -> None:
    made.clear()
    adapter = registry.create_adapter("moshi", {"transport": "echo", "vad": "gate"})
    assert isinstance(adapter, MoshiAdapter)
    gate = adapter._vad_factory(VadConfig(8000))
    assert isinstance(gate, Gate) and gate.end == 4000  # GateSettings().end_ms at 8 kHz
    adapter._make_transport()
    assert made[-1][1] == EchoSettings()


@pytest.mark.parametrize(
    ("moshi", "section", "problem"),
    [
        ({"vad": "gate", "vad_settings": {"end_msec": 300}}, "moshi.vad_settings",
         "unknown key 'end_msec'; known keys: end_ms"),
        ({"vad": "gate", "vad_settings": {"end_ms": 5}}, "moshi.vad_settings",
         "end_ms: must be >= 20, got 5"),
        ({"vad": "energy", "vad_settings": {"end_ms": 300}}, "moshi.vad_settings",
         "VAD 'energy' takes no settings"),
        ({"transport": "echo", "transport_settings": {"delay_frames": "two"}},
         "moshi.transport_settings", "delay_frames: expected int, got 'two'"),
        ({"transport": "remote", "url": "ws://h:1/api/chat", "transport_settings": {"x": 1}},
         "moshi.transport_settings", "transport 'remote' takes no settings"),
        ({"vad_settings": ["end_ms", 300]}, "adapter 'moshi'", "vad_settings: expected table"),
    ],
)
def test_bad_settings_fail_when_the_adapter_is_made(
        registry: Registry, moshi: dict[str, object], section: str, problem: str) -> None:
    with pytest.raises(SettingsError) as err:
        registry.create_adapter("moshi", {"transport": "echo", **moshi})
    assert err.value.section == section
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_settings_for_a_builtin_part_are_refused_outside_a_registry_too() -> None:
    # The no-plugin-loading shortcut for this package's own parts must not skip the check.
    with pytest.raises(SettingsError, match="VAD 'energy' takes no settings"):
        MoshiAdapter(MoshiSettings(url="ws://127.0.0.1:9/api/chat", vad="energy",
                                   vad_settings={"x": 1}))
    with pytest.raises(SettingsError, match="transport 'remote' takes no settings"):
        MoshiAdapter(MoshiSettings(url="ws://127.0.0.1:9/api/chat", vad="energy",
                                   transport_settings={"x": 1}))

"""The Moshi transport registry: a transport from an inline plugin, chosen by
``transport = "name"``, carries a call made through ``registry.create_adapter``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voice_server_moshi import AudioChunk, AudioFormat, SettingsError, VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.hookspecs import Register, hookimpl
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.moshi.transports import embedded_transport, remote_transport
from voice_server_moshi.registry import load_registry
from voice_server_moshi.testing.scripted_transport import ScriptedTransport

made: list[tuple[MoshiSettings, ScriptedTransport]] = []


def loopback(settings: MoshiSettings) -> ScriptedTransport:
    transport = ScriptedTransport(session_id="loopback")
    made.append((settings, transport))
    return transport


class LoopbackPlugin:
    @hookimpl
    def voice_server_register_moshi_transports(self, register: Register) -> None:
        register("loopback", loopback, description="echoes the caller (test)")


def test_builtin_transports_are_registered_and_unknown_names_listed() -> None:
    reg = load_registry(plugins=[LoopbackPlugin()], blocked=[])
    assert set(reg.moshi_transports) >= {"remote", "embedded", "loopback"}
    assert reg.moshi_transports["remote"].plugin == "moshi"
    with pytest.raises(SettingsError, match=r"transport: no transport named 'carrier-pigeon'; "
                       r"registered: embedded, loopback, remote"):
        reg.create_adapter("moshi", {"transport": "carrier-pigeon"})
    assert MoshiAdapter(MoshiSettings())._transport_factory is embedded_transport
    assert MoshiAdapter(MoshiSettings(url="ws://h:1/api/chat"))._transport_factory \
        is remote_transport


async def test_settings_select_the_plugin_transport() -> None:
    made.clear()
    reg = load_registry(plugins=[LoopbackPlugin()], blocked=[])
    adapter = reg.create_adapter("moshi", {"transport": "loopback", "stall_fill_ms": 500})
    fmt = AudioFormat("mulaw", 8000, 20)
    await adapter.connect(VoiceModelConfig(call_id="tp1", audio=fmt))
    chunks: list[AudioChunk] = []

    async def consume() -> None:
        async for e in adapter.events():
            if isinstance(e, AudioChunk):
                chunks.append(e)

    task = asyncio.create_task(consume())
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000)).astype(np.int16)
    for _ in range(25):
        await adapter.send_audio(g711.encode(tone, "mulaw"))
    async with asyncio.timeout(10):
        while len(chunks) < 12:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await adapter.disconnect()
    await asyncio.wait_for(task, 10)
    ((settings, transport),) = made
    assert settings.transport == "loopback" and settings.stall_fill_ms == 500
    assert transport.opened_with == "tp1" and transport.closed
    assert len(transport.sent) >= 5  # 80 ms Moshi frames reached the plugin's transport
    # ...and its echo came back through the adapter as the caller's tone.
    assert max(np.abs(g711.decode(c.audio, "mulaw")).max() for c in chunks) > 4000

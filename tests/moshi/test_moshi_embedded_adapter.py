"""The Moshi adapter on its other transport: the embedded engine (dev checkpoint, CPU),
and the adapter as a host gets it, through the plugin registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from voice_server_moshi.events import AudioChunk, Transcript
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.remote import RemoteTransport
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.registry import load_registry
from voice_server_moshi.testing.calls import MULAW_8K, CallRecorder, speechlike


def test_registry_builds_the_moshi_adapter_from_a_config_section() -> None:
    adapter = load_registry().create_adapter(
        "moshi", {"url": "ws://127.0.0.1:8998/api/chat", "stall_fill_ms": 60}
    )
    assert isinstance(adapter, MoshiAdapter)
    assert adapter.settings.stall_fill_ms == 60
    assert isinstance(adapter._make_transport(), RemoteTransport)
    assert adapter.capabilities.full_duplex and adapter.capabilities.agent_transcript


@pytest.mark.slow
async def test_two_second_call_on_the_embedded_engine(dev_checkpoint: Path) -> None:
    settings = MoshiSettings(checkpoint=str(dev_checkpoint), device="cpu",
                             connect_timeout_s=120)
    assert settings.resolved_transport == "embedded"
    call = await CallRecorder(MoshiAdapter(settings)).start()
    await call.send_realtime(speechlike(2.0, seed=3))
    await call.until(lambda: call.agent_ms() >= 2000 - 80, within_s=10)
    await call.end()
    names = [e.name for e in call.events]
    assert names[0] == "connected" and names[-1] == "disconnected"
    assert names.count("disconnected") == 1 and "error" not in names
    chunks = [e for e in call.events if isinstance(e, AudioChunk)]
    assert chunks and {len(c.audio) for c in chunks} == {MULAW_8K.bytes_per_frame}
    assert any(isinstance(e, Transcript) and e.final for e in call.events)

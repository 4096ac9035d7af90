"""``serve --stt``: caller transcripts on Kyutai's protocol (0x50-0x53), read by the remote
transport (dev checkpoints, CPU, loopback, real WebSocket server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.audio.wavio import read_wav
from voice_server_moshi.bundled import bundled_clip_dir
from voice_server_moshi.engine.call_sampling import GREEDY
from voice_server_moshi.engine.core import EngineConfig
from voice_server_moshi.engine.models import load_models
from voice_server_moshi.events import Disconnected, Event, Transcript
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.remote import RemoteTransport
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.server.app import BatchedServer
from voice_server_moshi.testing.serving import serving

pytestmark = pytest.mark.slow


@pytest.fixture
async def served() -> AsyncIterator[BatchedServer]:
    models = await asyncio.to_thread(load_models, "dev", device="cpu", dtype="float32",
                                     stt="dev")
    async with serving(models, EngineConfig(slots=2, sampling=GREEDY)) as srv:
        yield srv


async def test_the_remote_transport_receives_caller_transcripts(served: BatchedServer) -> None:
    url = f"ws://127.0.0.1:{served.port}/api/chat"
    probe = RemoteTransport(MoshiSettings(url=url))
    await probe.open("probe")
    assert probe.caller_transcript and probe.metadata["caller_transcript"] is True
    await probe.close()

    clip = read_wav(bundled_clip_dir() / "u2.wav").samples[:, 0]
    x = np.concatenate([np.zeros(4000, np.float32), clip])
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    adapter = MoshiAdapter(MoshiSettings(url=url, stall_fill_ms=2000))
    await adapter.connect(VoiceModelConfig(call_id="remote-stt"))
    assert adapter.capabilities.caller_transcript
    events: list[tuple[bool, Event]] = []
    hung_up = False

    async def consume() -> None:
        async for e in adapter.events():
            events.append((hung_up, e))

    task = asyncio.create_task(consume())
    for i in range(0, len(pcm), 320):  # 20 ms chunks, real time
        await adapter.send_audio(pcm[i:i + 320])
        await asyncio.sleep(0.02)
    hung_up = True
    await adapter.disconnect()
    await asyncio.wait_for(task, 30)
    caller = [(after, e) for after, e in events
              if isinstance(e, Transcript) and e.role == "caller"]
    assert caller and caller[-1][1].final
    if not adapter.counters.get("silence_frames"):  # see the embedded test
        assert any(after for after, _ in caller), "no caller words came from the flush"
    assert isinstance(events[-1][1], Disconnected)
    assert adapter.counters["caller_pieces"] >= 2 and adapter.counters["caller_flushes"] == 1

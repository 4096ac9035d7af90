"""LiveKit's own PersonaPlex plugin (``livekit-plugins-nvidia``'s experimental
``RealtimeModel``), unchanged, holds a call against ``serve --checkpoint dev-personaplex``
(the :class:`BatchedServer` in process, so the call's grant can be read): it connects with
NVIDIA's query parameters (``text_prompt``, ``voice_prompt=NATM1.pt``, ``seed``), waits for
the handshake (sent once the persona is in the row), streams its Opus audio up and gets the
agent's audio back; the server applied the persona and the voice, and the ``0x04``
metadata it sent echoes them (ADR 0130)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("livekit.plugins.nvidia", reason="needs livekit-plugins-nvidia")

import aiohttp
from livekit import rtc
from livekit.agents import llm
from livekit.plugins.nvidia.experimental.realtime import RealtimeModel

from voice_server_moshi.callpath.front import grant_metadata
from voice_server_moshi.engine.call_sampling import GREEDY
from voice_server_moshi.engine.core import EngineConfig
from voice_server_moshi.engine.models import load_models
from voice_server_moshi.server.app import BatchedServer
from voice_server_moshi.testing.serving import serving

pytestmark = pytest.mark.slow

PERSONA = "You are a friendly receptionist at a dental clinic."


@pytest.fixture
async def server() -> AsyncIterator[BatchedServer]:
    models = await asyncio.to_thread(load_models, "dev-personaplex", device="cpu",
                                     dtype="float32")
    async with serving(models, EngineConfig(slots=2, sampling=GREEDY)) as srv:
        yield srv


def tone_frame(k: int) -> rtc.AudioFrame:
    t = (np.arange(480) + 480 * k) / 48000  # 10 ms at 48 kHz, as a LiveKit room sends
    x = (0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    return rtc.AudioFrame(x.tobytes(), 48000, 1, 480)


async def test_livekit_personaplex_plugin_holds_a_persona_call(server: BatchedServer) -> None:
    frames: list[rtc.AudioFrame] = []
    errors: list[llm.RealtimeModelError] = []

    async def collect(ev: llm.GenerationCreatedEvent) -> None:
        async for msg in ev.message_stream:
            async for f in msg.audio_stream:
                frames.append(f)

    async with aiohttp.ClientSession() as http:
        model = RealtimeModel(base_url=f"ws://127.0.0.1:{server.port}", voice="NATM1",
                              text_prompt=PERSONA, seed=5, http_session=http)
        session = model.session()
        session.on("generation_created", lambda ev: asyncio.ensure_future(collect(ev)))
        session.on("error", errors.append)
        try:
            async with asyncio.timeout(60):
                while not server.call_ids:  # noqa: ASYNC110 (the grant comes after the prefill)
                    await asyncio.sleep(0.02)
            call = server._calls[server.call_ids[0]]
            grant = call.link.grant
            md = grant_metadata(grant, instance_name=server.config.instance_name)
            k = 0
            async with asyncio.timeout(60):
                while sum(f.samples_per_channel for f in frames) < 24000:  # 1 s of agent
                    for _ in range(8):  # 80 ms of caller audio in real time
                        session.push_audio(tone_frame(k))
                        k += 1
                    await asyncio.sleep(0.08)
        finally:
            await session.aclose()
            await model.aclose()
    assert (grant.persona, grant.voice) == (f"<system> {PERSONA} <system>", "NATM1")
    assert (md["persona"], md["voice"]) == (grant.persona, "NATM1")
    assert (md["text_seed"], md["audio_seed"]) == (5, 5)  # NVIDIA's one seed
    assert all(f.sample_rate == 24000 for f in frames) and not errors

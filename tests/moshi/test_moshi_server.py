"""The Moshi adapter against Kyutai's own ``moshi.server`` (dev checkpoint, CPU, loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.errors import ServerBusyError
from voice_server_moshi.events import AudioChunk, Disconnected, Error, Transcript
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.testing.calls import MULAW_8K, CallRecorder, speechlike
from voice_server_moshi.testing.moshi_server import MoshiServer

pytestmark = pytest.mark.slow

MULAW = MULAW_8K
MOSHI_FRAME_MS = 80.0


def _settings(server: MoshiServer, **kw: object) -> MoshiSettings:
    return MoshiSettings(url=server.url, **kw)  # type: ignore[arg-type]


async def test_five_second_call(moshi_server: MoshiServer) -> None:
    # speechlike() is a buzz, not speech: the loudness VAD is the one that must find it.
    call = await CallRecorder(MoshiAdapter(_settings(moshi_server, connect_timeout_s=60,
                                                     vad="energy"))).start()
    await call.send_realtime(speechlike(5.0))
    # Moshi answers each 80 ms frame with one; its output trails the input by its acoustic
    # delay. The call stays open (the stall fill keeps Moshi's clock running) until the
    # agent stream has caught up with the 5 s of caller audio.
    await call.until(lambda: call.agent_ms() >= 5000 - MOSHI_FRAME_MS, within_s=10)
    await call.end()
    ev = call.events
    names = [e.name for e in ev]
    assert names[0] == "connected"
    assert names.count("disconnected") == 1 and names[-1] == "disconnected"
    assert "error" not in names, [e for e in ev if isinstance(e, Error)]
    chunks = [e for e in ev if isinstance(e, AudioChunk)]
    assert chunks and all(len(c.audio) == 160 and c.format == MULAW for c in chunks)
    total = call.agent_ms()
    assert abs(total - 5000) <= MOSHI_FRAME_MS, total
    # Nothing Moshi sent was lost or invented: the chunks are its audio, less < 1 frame.
    received_ms = call.adapter._agent_ms()
    assert 0 <= received_ms - total < 20 + 1e-6
    assert any(isinstance(e, Transcript) and e.role == "agent" and e.final for e in ev)
    assert {"speech-started", "speech-ended"} <= set(names)
    assert call.adapter.counters.get("late_frames", 0) == 0
    disc = ev[-1]
    assert isinstance(disc, Disconnected) and disc.reason == "client"


async def test_second_call_is_told_server_busy(moshi_server: MoshiServer) -> None:
    first = await CallRecorder(MoshiAdapter(_settings(moshi_server, connect_timeout_s=60))).start()
    sender = asyncio.create_task(first.send_realtime(speechlike(4.0, seed=1)))
    await first.until(lambda: first.agent_ms() >= 400, within_s=10)
    second = MoshiAdapter(_settings(moshi_server, connect_timeout_s=2))
    t0 = time.monotonic()
    with pytest.raises(ServerBusyError, match="server busy: connected but no handshake"):
        await second.connect(VoiceModelConfig(audio=MULAW))
    assert time.monotonic() - t0 < 2 + 2  # the connect timeout, plus a loaded machine
    # The first call is unaffected: its audio keeps coming, without errors.
    before = first.agent_ms()
    await first.until(lambda: first.agent_ms() >= before + 400, within_s=10)
    await sender
    await first.end()
    assert not [e for e in first.events if isinstance(e, Error)]
    assert [e.name for e in first.events][-1] == "disconnected"


async def test_killed_server_gives_error_then_disconnected_within_2s(
    moshi_server_factory: Callable[[], MoshiServer],
) -> None:
    server = moshi_server_factory()
    call = await CallRecorder(MoshiAdapter(_settings(server, connect_timeout_s=60))).start()
    sender = asyncio.create_task(call.send_realtime(speechlike(10.0, seed=2)))
    await call.until(lambda: call.agent_ms() >= 400, within_s=10)
    killed_at = time.monotonic()
    server.kill()
    await asyncio.wait_for(call.task, 5)  # type: ignore[arg-type]
    await asyncio.wait_for(sender, 5)
    tail = call.events[-2:]
    err, disc = tail
    assert isinstance(err, Error) and err.fatal and err.code == "peer_vanished"
    assert isinstance(disc, Disconnected) and disc.reason == "peer-vanished"
    assert disc.close_code is not None
    assert call.times[-1] - killed_at <= 2.0
    assert [e.name for e in call.events].count("disconnected") == 1

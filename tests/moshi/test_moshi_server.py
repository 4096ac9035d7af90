"""The Moshi adapter against Kyutai's own ``moshi.server`` (dev checkpoint, CPU, loopback)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.errors import ServerBusyError
from voice_server_moshi.events import AudioChunk, Disconnected, Error, Transcript
from voice_server_moshi.moshi import protocol
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.remote import RemoteTransport
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.moshi.transport import MOSHI_FRAME_SAMPLES, AgentAudio
from voice_server_moshi.testing.calls import MULAW_8K, CallRecorder, speechlike
from voice_server_moshi.testing.moshi_server import MoshiServer

pytestmark = pytest.mark.slow

MULAW = MULAW_8K
MOSHI_FRAME_MS = 80.0


def _settings(server: MoshiServer, **kw: object) -> MoshiSettings:
    return MoshiSettings(url=server.url, **kw)  # type: ignore[arg-type]


def _frames_handled(server: MoshiServer) -> list[float]:
    """Kyutai's server's own per-frame times ("frame handled in X ms") so far."""
    text = server.log_path.read_text(errors="replace")
    return [float(x) for x in re.findall(r"frame handled in ([\d.]+)ms", text)]


async def test_remote_transport_streams_in_real_time_to_kyutais_server(
    moshi_server: MoshiServer,
) -> None:
    """The dev checkpoint on Kyutai's unmodified server, driven by our remote transport
    like Kyutai's own client: 25 frames of a tone in real time, one agent frame back per
    frame after the first, every frame handled by the server."""
    import numpy as np

    handled_before = len(_frames_handled(moshi_server))
    transport = RemoteTransport(MoshiSettings(url=moshi_server.url, connect_timeout_s=60))
    await transport.open("kyutai-check")
    assert transport.handshake == protocol.Handshake()  # Python server: 1-byte handshake
    samples = 0

    async def receive() -> None:
        nonlocal samples
        async for event in transport.receive():
            if isinstance(event, AgentAudio):
                samples += len(event.pcm)

    reader = asyncio.create_task(receive())
    t = np.arange(MOSHI_FRAME_SAMPLES) / 24000
    frames = 25
    for i in range(frames):
        await transport.send_frame((0.2 * np.sin(2 * np.pi * 220 * (t + i * 0.08)))
                                   .astype(np.float32))
        await asyncio.sleep(0.08)
    # One agent frame back per frame after the first (Opus may hold back half a frame);
    # on a loaded machine the last ones can take a while to arrive.
    want = 20 * MOSHI_FRAME_SAMPLES - 960
    for _ in range(100):
        if samples >= want:
            break
        await asyncio.sleep(0.1)
    await transport.close()
    await asyncio.wait_for(reader, 5)
    handled = _frames_handled(moshi_server)[handled_before:]
    # Allowing a few still in flight when the client hung up on a loaded machine.
    assert len(handled) >= 20, handled
    assert samples >= want, samples


async def test_five_second_call(moshi_server: MoshiServer) -> None:
    # stt is an embedded setting: against Kyutai's server (which sends no caller
    # transcript) it changes nothing, and the capability says so (ADR 0075).
    # speechlike() is a buzz, not speech: the loudness VAD is the one that must find it.
    adapter = MoshiAdapter(_settings(moshi_server, connect_timeout_s=60, stt="dev",
                                     vad="energy"))
    call = await CallRecorder(adapter).start()
    assert not adapter.capabilities.caller_transcript
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
    assert not any(isinstance(e, Transcript) and e.role == "caller" for e in ev)
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

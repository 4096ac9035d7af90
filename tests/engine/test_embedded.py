"""EmbeddedTransport: MoshiTransport over the process-wide shared engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine import shared
from voice_server_moshi.engine.checkpoints import make_dev_checkpoint
from voice_server_moshi.errors import ConnectError, ServerBusyError
from voice_server_moshi.moshi.embedded import EmbeddedTransport
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.moshi.transport import (
    MOSHI_FRAME_SAMPLES,
    AgentAudio,
    AgentText,
    TransportEvent,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("embedded") / "dev"
    make_dev_checkpoint(d)
    yield str(d)
    shared.shutdown_all()


def frames(n: int) -> list[np.ndarray]:
    t = np.arange(n * MOSHI_FRAME_SAMPLES) / 24000
    x = (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    return [x[i * MOSHI_FRAME_SAMPLES:(i + 1) * MOSHI_FRAME_SAMPLES] for i in range(n)]


async def test_two_calls_share_one_engine_and_a_third_is_busy(ckpt: str) -> None:
    settings = MoshiSettings(checkpoint=ckpt, device="cpu", slots=2)
    a, b = EmbeddedTransport(settings), EmbeddedTransport(settings)
    sid_a = await a.open("call-a")
    sid_b = await b.open("call-b")
    assert sid_a != sid_b and sid_a.startswith("embedded-")
    assert a.call is not None and b.call is not None and a.call.engine is b.call.engine

    with pytest.raises(ServerBusyError, match=r"moshi\.slots=2"):
        await EmbeddedTransport(settings).open("call-c")

    with pytest.raises(ValueError, match="1920"):
        await a.send_frame(np.zeros(100, dtype=np.float32))

    n = 6
    got: list[TransportEvent] = []

    async def consume() -> None:
        async for ev in a.receive():
            got.append(ev)
            if sum(isinstance(e, AgentAudio) for e in got) == n - 1:
                return

    task = asyncio.create_task(consume())
    for f in frames(n):
        await a.send_frame(f)
        await b.send_frame(f)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(task, 60)
    audio = [e for e in got if isinstance(e, AgentAudio)]
    assert len(audio) == n - 1
    assert all(e.pcm.shape == (MOSHI_FRAME_SAMPLES,) and e.pcm.dtype == np.float32 for e in audio)
    assert all(isinstance(e, AgentAudio | AgentText) for e in got)

    await a.close()
    await a.close()  # idempotent
    await a.send_frame(frames(1)[0])  # after close: ignored, no error
    # The freed slot serves a new call.
    c = EmbeddedTransport(settings)
    await c.open("call-c")
    await c.close()
    await b.close()
    assert a.call.engine.free_slots() == 2


async def test_bad_checkpoint_is_a_connect_error() -> None:
    t = EmbeddedTransport(MoshiSettings(checkpoint="/definitely/not/here", device="cpu"))
    with pytest.raises(ConnectError, match="could not load the embedded Moshi engine"):
        await t.open("x")
    with pytest.raises(ConnectError, match="before open"):
        await t.send_frame(frames(1)[0])


async def test_a_sender_faster_than_real_time_is_paced_not_dropped(ckpt: str) -> None:
    settings = MoshiSettings(checkpoint=ckpt, device="cpu", slots=2)
    t = EmbeddedTransport(settings)
    await t.open("fast")
    n = 16
    got = 0

    async def consume() -> None:
        nonlocal got
        async for ev in t.receive():
            if isinstance(ev, AgentAudio):
                got += 1
                if got == n - 1:
                    return

    task = asyncio.create_task(consume())
    for f in frames(n):  # no sleeps: as fast as the transport lets us
        await t.send_frame(f)
    await asyncio.wait_for(task, 60)
    assert t.call is not None and t.call.slot is not None
    assert got == n - 1 and t.call.slot.overruns == 0
    await t.close()

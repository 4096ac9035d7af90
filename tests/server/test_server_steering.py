"""Steering through ``serve`` (ADR 0070, docs/protocol.md): a plain Kyutai-protocol client
sends ``0x02`` text and hears it back in the agent's ``0x02`` stream; the adapter's remote
transport steers too; Kyutai's own server is reported as not steerable. Say, cancel and
malformed steering on every front door: tests/frontdoors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

import sphn
import websockets
from websockets.exceptions import ConnectionClosed

from voice_server_moshi.engine.call_sampling import GREEDY
from voice_server_moshi.engine.core import Engine, EngineConfig
from voice_server_moshi.engine.models import load_models
from voice_server_moshi.errors import SteeringUnsupportedError
from voice_server_moshi.events import AudioChunk, Steering, Transcript
from voice_server_moshi.host.config import load_config
from voice_server_moshi.host.reference import ReferenceHost
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.server.app import BatchedServer, ServerConfig
from voice_server_moshi.testing.calls import CallRecorder, speechlike
from voice_server_moshi.testing.moshi_server import MoshiServer

FRAME = 1920
TEXT = "hello there, this is a test"


@pytest.fixture(scope="module")
def engine(dev_checkpoint: Path) -> Iterator[Engine]:
    # Input-clocked (no silence fill), greedy: a call's outputs depend on its input only.
    eng = Engine(load_models(str(dev_checkpoint), device="cpu", dtype="float32"),
                 EngineConfig(slots=2, sampling=GREEDY,
                              # The "same as alone" comparison needs every frame: no
                              # backlog trimming (ADR 0065) on this slow shared CPU.
                              trim_window_ticks=None,
                              fill_after_ticks=None,
                              # ... and the same batch width alone and together: a narrower
                              # batch rounds floats differently (PCM within 1e-6, ADR
                              # 0135), and Opus turns that into other bytes.
                              live_rows_only=False))
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture
async def server(engine: Engine) -> AsyncIterator[BatchedServer]:
    srv = BatchedServer(engine, ServerConfig(host="127.0.0.1", port=0))
    await srv.start()
    yield srv
    await srv.close()


def tone(i: int, n: int) -> list[np.ndarray]:
    t = np.arange(n * FRAME) / 24000
    x = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
    return [x[k * FRAME:(k + 1) * FRAME] for k in range(n)]


class KyutaiClient:
    """Raw websockets + sphn Opus, as Kyutai's clients do, plus one ``0x02`` say."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.msgs: list[tuple[float, int, bytes]] = []  # (arrival, kind, payload)

    async def run(self, frames: list[np.ndarray], say_at: int | None = None,
                  extra: list[tuple[int, bytes]] | None = None) -> float:
        """Send the frames at 80 ms; ``0x02`` TEXT before frame ``say_at``; returns when the
        say went out (monotonic)."""
        sent = 0.0
        async with websockets.connect(self.url, proxy=None, compression=None,
                                      open_timeout=30) as ws:
            reader = asyncio.create_task(self._read(ws))
            writer = sphn.OpusStreamWriter(24000)
            todo = dict(extra or [])
            for k, f in enumerate(frames):
                if k == say_at:
                    await ws.send(b"\x02" + TEXT.encode())
                    sent = time.monotonic()
                if k in todo:
                    await ws.send(todo[k])
                data = writer.append_pcm(f)
                if len(data):
                    await ws.send(b"\x01" + bytes(data))
                await asyncio.sleep(0.08)
                # Never more than 3 frames ahead of the agent: on a slow shared CPU the
                # engine may not keep real time, and an input queue overrun would drop
                # frames (a real client on a real-time server never waits here).
                await self._until(lambda k=k: len(self.of(1)) >= k - 3)
            await self._until(lambda: len(self.of(1)) >= len(frames) - 2)
            await asyncio.sleep(0.3)
            await ws.close()
            await asyncio.wait_for(reader, 10)
        return sent

    async def _until(self, pred: Callable[[], bool], limit_s: float = 30.0) -> None:
        async with asyncio.timeout(limit_s):
            while not pred():  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for m in ws:
                assert isinstance(m, bytes)
                self.msgs.append((time.monotonic(), m[0], m[1:]))
        except ConnectionClosed:
            pass

    def of(self, kind: int) -> list[tuple[float, bytes]]:
        return [(t, p) for t, k, p in self.msgs if k == kind]


@pytest.mark.slow
async def test_a_plain_client_says_text_and_a_concurrent_call_is_unaffected(
        server: BatchedServer) -> None:
    url = f"ws://127.0.0.1:{server.port}/api/chat"
    alone = KyutaiClient(url)
    await alone.run(tone(1, 70))
    a, b = KyutaiClient(url), KyutaiClient(url)
    sent, _ = await asyncio.gather(a.run(tone(0, 70), say_at=8), b.run(tone(1, 70)))

    meta = json.loads(a.of(4)[0][1])
    assert meta["steering"] is True and meta["server"] == "voice-server-moshi"
    updates = [json.loads(p) for _, p in a.of(0x40)]
    assert [(u["id"], u["status"]) for u in updates] == [
        ("say-1", "queued"), ("say-1", "started"), ("say-1", "finished")]
    # The words come back in order, whole, in the agent's own text stream.
    pieces = [(t, p.decode()) for t, p in a.of(2) if t >= sent]
    text = "".join(p for _, p in pieces)
    assert TEXT.replace(" ", "") in text.replace(" ", "")
    joined, last = "", None
    for t, p in pieces:
        joined += p
        if TEXT.replace(" ", "") in joined.replace(" ", ""):
            last = t
            break
    assert last is not None
    # Within 5 s of call time: the agent frames that came between the request and the last
    # word (wall time here also counts how far this shared CPU runs behind real time).
    frames = sum(1 for t, _ in a.of(1) if sent <= t <= last)
    assert frames * 0.08 < 5.0, (frames, last - sent)
    # The concurrent call: exactly the audio and text it gets alone.
    assert [p for _, p in b.of(1)] == [p for _, p in alone.of(1)]
    assert [p for _, p in b.of(2)] == [p for _, p in alone.of(2)]
    assert not b.of(0x40) and not b.of(5)


@pytest.mark.slow
async def test_create_response_reaches_moshi_through_serve(server: BatchedServer) -> None:
    host = ReferenceHost(load_config({"moshi": {
        "url": f"ws://127.0.0.1:{server.port}/api/chat", "stall_fill_ms": 2000}}))
    result = await host.run_call(b"\xff" * 8000, clock="virtual", tail_ms=3000,
                                 says=[(400.0, TEXT)])
    steer = [r.data["status"] for r in result.records if r.name == "agent-steering"]
    assert steer == ["queued", "started", "finished"]
    words = [str(r.data["text"]) for r in result.records
             if r.name == "transcript" and r.data.get("final")]
    assert " ".join(words).find("hello there, this is a test") >= 0


@pytest.mark.slow
async def test_kyutais_own_server_is_not_steerable(moshi_server: MoshiServer) -> None:
    adapter = MoshiAdapter(MoshiSettings(url=moshi_server.url, connect_timeout_s=60))
    call = await CallRecorder(adapter).start()
    try:
        assert adapter.capabilities.steering is False
        await call.until(lambda: bool(call.events), within_s=5)
        assert call.events[0].capabilities.steering is False  # type: ignore[attr-defined]
        with pytest.raises(SteeringUnsupportedError, match="Kyutai's own servers"):
            await adapter.say_text("hello")
        await call.send_realtime(speechlike(0.3))
    finally:
        await call.end()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["embedded", "serve"])
async def test_say_audio_through_the_adapter(where: str, server: BatchedServer,
                                             dev_checkpoint: Path) -> None:
    settings = (MoshiSettings(checkpoint=str(dev_checkpoint), device="cpu", slots=2)
                if where == "embedded" else
                MoshiSettings(url=f"ws://127.0.0.1:{server.port}/api/chat"))
    adapter = MoshiAdapter(settings)
    call = await CallRecorder(adapter).start()
    try:
        assert adapter.capabilities.steering is True
        t = np.arange(16000) / 16000  # 1 s of a 16 kHz host-TTS stand-in
        clip = (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
        rid = await adapter.say_audio(clip, "hello there", sample_rate=16000)
        sender = asyncio.create_task(call.send_realtime(speechlike(6.0, seed=2) // 50))
        await call.until(lambda: any(isinstance(e, Steering) and e.request_id == rid
                                     and e.status == "finished" for e in call.events),
                         within_s=60)
        sender.cancel()
    finally:
        await call.end()
    marks = [e.status for e in call.events if isinstance(e, Steering)]
    assert marks == ["queued", "started", "finished"]
    start = next(i for i, e in enumerate(call.events)
                 if isinstance(e, Steering) and e.status == "started")
    end = next(i for i, e in enumerate(call.events)
               if isinstance(e, Steering) and e.status == "finished")
    words = [e.text for e in call.events[start:end] if isinstance(e, Transcript) and e.final]
    assert words == ["hello", "there"]
    # About a second of agent audio (13 Moshi frames) carried the clip.
    assert 12 * 80 <= sum(e.duration_ms for e in call.events[start:end]
                          if isinstance(e, AudioChunk)) <= 15 * 80

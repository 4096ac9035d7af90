"""A small host for the vendor adapter tests: connect, stream caller audio, collect events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from voice_server_moshi.adapter import BaseAdapter, VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.events import AudioChunk, Event
from voice_server_moshi.formats import AudioFormat

MULAW = AudioFormat("mulaw", 8000, 20)


def frame(fmt: AudioFormat, loud: bool, ms: int | None = None) -> bytes:
    n = fmt.sample_rate * (ms or fmt.frame_ms) // 1000
    t = np.arange(n) / fmt.sample_rate
    pcm = (10000 * np.sin(2 * np.pi * 300 * t) if loud else np.zeros(n)).astype(np.int16)
    return g711.encode(pcm, fmt.encoding)


class Collector:
    """``async with Collector(adapter) as call``: connected, events collected in ``events``."""

    def __init__(self, adapter: BaseAdapter, fmt: AudioFormat = MULAW,
                 metadata: dict[str, str] | None = None) -> None:
        self.adapter = adapter
        self.fmt = fmt
        self.metadata = metadata or {}
        self.events: list[Event] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self.adapter.connect(VoiceModelConfig(audio=self.fmt, metadata=self.metadata))
        self._task = asyncio.get_running_loop().create_task(self._consume())
        return self

    async def _consume(self) -> None:
        async for event in self.adapter.events():
            self.events.append(event)

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.wait_for(self.adapter.disconnect(), 10)
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    async def caller(self, ms: int, *, loud: bool, pace: float = 0.25) -> None:
        """Stream ``ms`` of caller audio in frames, at ``pace`` x real time."""
        for _ in range(ms // self.fmt.frame_ms):
            if self.adapter.state != "connected":
                return
            await self.adapter.send_audio(frame(self.fmt, loud))
            await asyncio.sleep(self.fmt.frame_ms / 1000 * pace)

    async def wait_for(self, predicate: Callable[[Event], bool], timeout_s: float = 15.0) -> Event:
        async with asyncio.timeout(timeout_s):
            while True:
                for e in self.events:
                    if predicate(e):
                        return e
                await asyncio.sleep(0.01)

    async def wait_name(self, name: str, timeout_s: float = 15.0) -> Event:
        return await self.wait_for(lambda e: e.name == name, timeout_s)

    async def ended(self, timeout_s: float = 15.0) -> None:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), timeout_s)

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def audio(self) -> list[AudioChunk]:
        return [e for e in self.events if isinstance(e, AudioChunk)]

"""Driving an adapter the way a host does, for tests: the one harness.

:class:`CallRecorder` connects an adapter, records every event (with its arrival time) from
a consumer task, sends caller audio (as it comes, or in frames on an absolute schedule)
and ends the call. The contract suite's caller (:mod:`.contract.framework`) and the
corpus runner (the reference host, :mod:`voice_server_moshi.host`) drive adapters the same
way, with the one scripted Moshi peer (:mod:`voice_server_moshi.moshi.scripted`) standing
in for the model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from ..adapter import BaseAdapter, VoiceModelConfig
from ..audio import g711
from ..errors import LifecycleError
from ..events import AudioChunk, Event
from ..formats import AudioFormat

__all__ = ["MULAW_8K", "CallRecorder", "speechlike"]

MULAW_8K = AudioFormat("mulaw", 8000, 20)


def speechlike(seconds: float, rate: int = 8000, seed: int = 0) -> NDArray[np.int16]:
    """0.8 s bursts of a noisy 200 Hz buzz, 0.6 s gaps of quiet noise (VAD-visible)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    on = (t % 1.4) < 0.8
    buzz = np.sign(np.sin(2 * np.pi * 200 * t)) * 4000 + rng.standard_normal(n) * 1500
    quiet = rng.standard_normal(n) * 40
    out: NDArray[np.int16] = np.where(on, buzz, quiet).clip(-32768, 32767).astype(np.int16)
    return out


class CallRecorder:
    """One call through ``adapter``: connect, record events, send audio, end."""

    def __init__(self, adapter: BaseAdapter, fmt: AudioFormat = MULAW_8K) -> None:
        #: the adapter under test
        self.adapter = adapter
        self.format = fmt
        self.events: list[Event] = []
        self.times: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def start(
        self, call_id: str | None = None, fmt: AudioFormat | None = None
    ) -> CallRecorder:
        if fmt is not None:
            self.format = fmt
        config = VoiceModelConfig(audio=self.format)
        if call_id is not None:
            config = VoiceModelConfig(call_id=call_id, audio=self.format)
        await self.adapter.connect(config)
        self.task = asyncio.create_task(self._consume())
        return self

    async def _consume(self) -> None:
        async for e in self.adapter.events():
            self.events.append(e)
            self.times.append(time.monotonic())

    def of(self, cls: type[Event]) -> list[Event]:
        """The events of one class, in order."""
        return [e for e in self.events if isinstance(e, cls)]

    async def wait_for(self, pred: Callable[[], bool], within_s: float = 10.0) -> None:
        """Wait until ``pred()`` holds; TimeoutError after ``within_s``."""
        await self.until(pred, within_s)

    def agent_ms(self) -> float:
        """Agent audio received so far, in ms."""
        return sum(e.duration_ms for e in self.events if isinstance(e, AudioChunk))

    async def until(self, pred: Callable[[], bool], within_s: float) -> None:
        """Wait until ``pred()`` holds; TimeoutError after ``within_s``."""
        async with asyncio.timeout(within_s):
            while not pred():  # noqa: ASYNC110 (polls counters and event lists)
                await asyncio.sleep(0.01)

    async def send_realtime(self, pcm: NDArray[np.int16]) -> None:
        """Frames of the call's size on an absolute schedule, as a media stream sends
        them; stops quietly if the session ends."""
        fmt = self.format
        n = fmt.samples_per_frame
        step = fmt.frame_ms / 1000.0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k in range(len(pcm) // n):
            try:
                await self.adapter.send_audio(g711.encode(pcm[k * n : (k + 1) * n], fmt.encoding))
            except LifecycleError:
                return
            await asyncio.sleep(max(0.0, t0 + (k + 1) * step - loop.time()))

    async def wait_ended(self, within_s: float = 10.0) -> None:
        """Wait for the event stream to end (the peer ended the call)."""
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), within_s)

    async def end(self, within_s: float = 10.0) -> None:
        """``disconnect()`` and wait for the consumer to see the end."""
        await self.adapter.disconnect()
        assert self.task is not None
        await asyncio.wait_for(self.task, within_s)

"""Caller audio from a framework into a full-duplex mode: any rate and channel count in,
the mode's format out, and (input-clocked) one mode tick per frame of caller audio.

Framework services built on the mode (the LiveKit plugin; the Pipecat service does the same
inline) hand every caller frame they get to :meth:`CallerFeed.push`. With a
:class:`~.clock.RealClock` the mode's own clock sends a frame every period (silence when the
caller's media is late). With a :class:`~.clock.ManualClock` the feed is the clock: each
whole frame of caller audio is one ``tick`` followed by ``settle`` (the model's answer),
like the reference host's virtual clock: deterministic whatever the machine's load, as fast
as the model allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np

from ..audio.resample import Resampler
from .clock import Clock, ManualClock

__all__ = ["MODE_RATES", "CallerFeed", "mode_rate_for"]

#: Rates the full-duplex mode runs at (the call's format).
MODE_RATES = (8000, 16000, 24000, 48000)


def mode_rate_for(rate: int) -> int:
    """The mode's rate for a framework running at ``rate``: the same when the mode supports
    it (no resampling at all), 16 kHz otherwise."""
    return rate if rate in MODE_RATES else 16000


class CallerFeed:
    """Caller PCM16 into ``mode`` (a started or starting full-duplex mode)."""

    def __init__(self, mode: Any, *, rate: int, frame_ms: int, clock: Clock | None) -> None:
        self.mode = mode
        self.rate = rate
        self.input_clocked = isinstance(clock, ManualClock)
        self._frame_bytes = rate * frame_ms // 1000 * 2
        self._resamplers: dict[int, Resampler] = {}
        self._q: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending = 0
        #: Caller audio handed to the mode so far (ms), and when each push reached it
        #: (``perf_counter``, filled only with ``record_timing``: benchmarks).
        self.fed_ms = 0.0
        self.record_timing = False
        self.in_wall: list[float] = []

    def convert(self, pcm: bytes, rate: int, channels: int) -> bytes:
        """``pcm`` (16-bit interleaved, ``channels``) as mono at the mode's rate (first
        channel: a phone call's caller is one voice)."""
        if channels != 1:
            pcm = np.frombuffer(pcm, dtype=np.int16).reshape(-1, channels)[:, 0].copy().tobytes()
        if rate != self.rate:
            rs = self._resamplers.get(rate)
            if rs is None:  # raises ValueError on a rate the resampler does not support
                rs = self._resamplers[rate] = Resampler(rate, self.rate)
            pcm = np.asarray(rs.process(np.frombuffer(pcm, dtype=np.int16)),
                             dtype=np.int16).tobytes()
        return pcm

    def push(self, pcm: bytes, rate: int, channels: int = 1) -> None:
        """One piece of caller audio as the framework delivers it (synchronous)."""
        audio = self.convert(pcm, rate, channels)
        if not audio or self.mode.ended:
            return
        if self.input_clocked:
            self._q.put_nowait(audio)
            return
        self._feed(audio)

    def _feed(self, audio: bytes) -> None:
        if self.record_timing:
            self.in_wall.append(time.perf_counter())
        self.mode.push_caller_audio(audio)
        self.fed_ms += len(audio) / 2 / self.rate * 1000.0

    async def run(self) -> None:
        """Input-clocked only: tick the mode with the caller audio as it comes (a task for
        the call's length; returns at once on a real clock)."""
        if not self.input_clocked:
            return
        while True:
            audio = await self._q.get()
            try:
                self._feed(audio)
                self._pending += len(audio)
                while self._pending >= self._frame_bytes and not self.mode.ended:
                    self._pending -= self._frame_bytes
                    await self.mode.tick()
                    await self.mode.settle()
            finally:
                self._q.task_done()

    def clear(self) -> int:
        """Drop the caller audio received and not yet played into the mode (bytes)."""
        n = 0
        while not self._q.empty():
            n += len(self._q.get_nowait())
            self._q.task_done()
        return n

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until the caller audio already received has been played into the mode."""
        if self.input_clocked:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._q.join(), timeout_s)

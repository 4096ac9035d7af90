"""In-process audio in and out for an ``AgentSession`` without a LiveKit room: a caller
recording as LiveKit's ``AudioInput``, a recording ``AudioOutput`` and ``TextOutput``
(tests, ``bench livekit``, the worked example's offline run)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from livekit import rtc
from livekit.agents.voice import io

__all__ = ["CallerInput", "PlayedFrame", "RecordingOutput", "TextLog"]


class CallerInput(io.AudioInput):
    """``pcm`` (16-bit mono at ``rate``) as 20 ms frames. ``heard_ms`` (the model's caller
    audio consumed so far) paces it: at most ``lead_ms`` ahead, so an input-clocked call
    runs as fast as the model and requests land at the call time they are made. Without it
    the frames come at ``speed`` x real time. ``tail_ms`` of silence follows the recording."""

    def __init__(self, pcm: bytes, rate: int, *, heard_ms: Callable[[], float] | None = None,
                 lead_ms: float = 200.0, speed: float = 1.0, tail_ms: float = 0.0,
                 ready: asyncio.Event | None = None) -> None:
        super().__init__(label="voice-server-moshi.caller")
        self.rate = rate
        self._n = rate // 50 * 2
        self._pcm = pcm + b"\x00" * (int(rate * tail_ms / 1000) * 2)
        self._heard = heard_ms
        self.lead_ms = lead_ms
        self.speed = speed
        self._ready = ready
        self._pos = 0
        self._t0: float | None = None
        self.done = asyncio.Event()
        #: perf_counter when each frame was handed to the framework (benchmarks).
        self.sent_wall: list[float] = []

    @property
    def duration_ms(self) -> float:
        return len(self._pcm) / 2 / self.rate * 1000.0

    @property
    def sent_ms(self) -> float:
        return self._pos / 2 / self.rate * 1000.0

    async def __anext__(self) -> rtc.AudioFrame:
        if self._pos >= len(self._pcm):
            self.done.set()
            raise StopAsyncIteration
        if self._ready is not None:
            await self._ready.wait()
        if self._heard is not None:
            while self.sent_ms - self._heard() > self.lead_ms:  # noqa: ASYNC110
                await asyncio.sleep(0.002)  # polls the model's progress: it sets no event
        else:
            now = time.perf_counter()
            self._t0 = now if self._t0 is None else self._t0
            delay = self._t0 + self.sent_ms / 1000.0 / self.speed - now
            if delay > 0:
                await asyncio.sleep(delay)
        chunk = self._pcm[self._pos:self._pos + self._n]
        self._pos += len(chunk)
        self.sent_wall.append(time.perf_counter())
        return rtc.AudioFrame(chunk, self.rate, 1, len(chunk) // 2)


@dataclass(frozen=True, slots=True)
class PlayedFrame:
    wall: float  # perf_counter when the framework handed it over
    duration_ms: float
    segment: int


class RecordingOutput(io.AudioOutput):
    """Keeps every agent frame the framework plays; a segment's playback ends at its flush
    (the room would play it in real time; nothing here waits)."""

    def __init__(self, sample_rate: int | None = None) -> None:
        super().__init__(label="voice-server-moshi.recording", sample_rate=sample_rate,
                         capabilities=io.AudioOutputCapabilities(pause=False))
        self.frames: list[PlayedFrame] = []
        self.pcm = bytearray()
        self.segments = 0
        self.interrupted_segments = 0
        self._seg_ms = 0.0
        self._capturing = False

    @property
    def played_ms(self) -> float:
        return sum(f.duration_ms for f in self.frames)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._capturing:
            self._capturing = True
            self.segments += 1
            self._seg_ms = 0.0
            self.on_playback_started(created_at=time.time())
        ms = frame.duration * 1000.0
        self._seg_ms += ms
        self.frames.append(PlayedFrame(time.perf_counter(), ms, self.segments))
        self.pcm += bytes(frame.data)

    def _finish(self, interrupted: bool) -> None:
        if self._capturing:
            self._capturing = False
            self.interrupted_segments += interrupted
            self.on_playback_finished(playback_position=self._seg_ms / 1000.0,
                                      interrupted=interrupted)

    def flush(self) -> None:
        super().flush()
        self._finish(False)

    def clear_buffer(self) -> None:
        self._finish(True)


class TextLog(io.TextOutput):
    """Keeps the agent text the framework forwards (Moshi's words), per segment."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(label="voice-server-moshi.text", next_in_chain=None)
        self.clock = clock  # stamps each piece (tests pass the call's clock)
        self.pieces: list[tuple[float, str]] = []

    @property
    def text(self) -> str:
        return "".join(p for _, p in self.pieces)

    async def capture_text(self, text: str) -> None:
        self.pieces.append((self.clock(), text))

    def flush(self) -> None:
        self.pieces.append((self.clock(), "\n"))

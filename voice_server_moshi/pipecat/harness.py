"""A scripted caller and a frame log for running ``MoshiService`` through Pipecat's own
runner without a network transport (tests, ``bench pipecat``).

``CallerSource`` plays PCM16 caller audio into the pipeline as ``InputAudioRawFrame``s at
real-time pace (or ``speed`` times it), the way an input transport would, then ends the
pipeline with an ``EndWorkerFrame``; ``FrameLog`` sits last and records every frame that
reaches it, with wall time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import EndWorkerFrame, Frame, InputAudioRawFrame, StartFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

__all__ = ["CallerSource", "FrameLog", "LoggedFrame", "run_pipeline"]


class CallerSource(FrameProcessor):
    """Plays ``audio`` (PCM16 mono at ``sample_rate``) in ``frame_ms`` frames.

    Waits for ``ready`` (e.g. the service's) before the first frame, so a slow model load
    does not eat the start of the call; ``tail_ms`` of silence follows the audio.
    """

    def __init__(
        self,
        audio: bytes,
        sample_rate: int,
        *,
        frame_ms: int = 20,
        speed: float = 1.0,
        tail_ms: float = 600.0,
        ready: asyncio.Event | None = None,
        end: bool = True,
        lead_s: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        n = sample_rate * frame_ms // 1000 * 2
        tail = b"\x00" * (int(tail_ms * sample_rate / 1000) * 2)
        data = audio + tail
        self.frames = [data[i : i + n] for i in range(0, len(data) - n + 1, n)]
        self.sample_rate = sample_rate
        self.period = frame_ms / 1000.0 / speed
        self.ready = ready
        self.end = end
        self.lead_s = lead_s  # first frame this long after start (phase vs the mode's ticks)
        #: Wall time (perf_counter) at which each caller frame entered the pipeline.
        self.sent_wall: list[float] = []
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame) and self._task is None:
            self._task = self.create_task(self._play(), "caller-source")

    async def _play(self) -> None:
        if self.ready is not None:
            await self.ready.wait()
        t0 = time.perf_counter() + self.lead_s
        for k, chunk in enumerate(self.frames):
            delay = t0 + k * self.period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sent_wall.append(time.perf_counter())
            await self.push_frame(InputAudioRawFrame(
                audio=chunk, sample_rate=self.sample_rate, num_channels=1))
        self.done.set()
        if self.end:
            await self.push_frame(EndWorkerFrame(reason="caller hung up"))

    async def cleanup(self) -> None:
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None
        await super().cleanup()  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class LoggedFrame:
    wall: float
    frame: Frame = field(repr=False)
    upstream: bool = False

    @property
    def kind(self) -> str:
        return type(self.frame).__name__


class FrameLog(FrameProcessor):
    """Records every frame that passes (and passes it on): last in the pipeline it sees what
    the service sends downstream; before the service, what it sends upstream."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames: list[LoggedFrame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        up = direction == FrameDirection.UPSTREAM
        self.frames.append(LoggedFrame(time.perf_counter(), frame, up))
        await self.push_frame(frame, direction)

    def of(self, *kinds: type[Frame], upstream: bool = False) -> list[LoggedFrame]:
        return [f for f in self.frames if isinstance(f.frame, kinds) and f.upstream == upstream]


async def run_pipeline(
    processors: list[FrameProcessor], *, in_rate: int, out_rate: int, timeout_s: float = 120.0
) -> PipelineWorker:
    """Run ``processors`` through Pipecat's ``WorkerRunner`` until the pipeline ends."""
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_in_sample_rate=in_rate, audio_out_sample_rate=out_rate),
        idle_timeout_secs=None,
        enable_rtvi=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(runner.run(), timeout_s)
    return worker

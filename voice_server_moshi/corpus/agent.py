"""A deterministic agent stand-in: a MoshiTransport that plays a scripted agent track.

Like Moshi it is clocked by its input: every caller frame sent yields one 80 ms frame of the
script (silence past its end) and the script's text pieces due in that frame. Plugged into
the real :class:`~voice_server_moshi.moshi.adapter.MoshiAdapter` through its ``transport=``
argument, it makes the full-duplex path (G.711, resampling, framing, VAD, playout, turn
logic) testable with known agent speech.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence

import numpy as np
import numpy.typing as npt

from ..audio.resample import Resampler
from ..errors import LifecycleError
from ..moshi.transport import (
    MOSHI_FRAME_MS,
    MOSHI_FRAME_SAMPLES,
    MOSHI_SAMPLE_RATE,
    PCM,
    AgentAudio,
    AgentText,
    MoshiTransport,
    PeerClosed,
    TransportEvent,
    queued_events,
)
from .assemble import Segment

_ids = itertools.count(1)


def text_schedule(segments: Sequence[Segment]) -> list[tuple[float, str]]:
    """Word pieces (' word', as Moshi sends them) spread evenly over each agent segment."""
    out: list[tuple[float, str]] = []
    for seg in segments:
        words = seg.text.split()
        step = (seg.end_ms - seg.start_ms) / max(1, len(words))
        out.extend((seg.start_ms + k * step, " " + w) for k, w in enumerate(words))
    return out


class ScriptedAgentTransport(MoshiTransport):
    """Plays ``agent`` (float PCM at ``rate``) frame by frame as caller frames come in."""

    def __init__(
        self,
        agent: npt.NDArray[np.float32],
        rate: int = 8000,
        text: Sequence[tuple[float, str]] = (),
    ) -> None:
        if rate == MOSHI_SAMPLE_RATE:
            self._pcm = np.asarray(agent, dtype=np.float32)
        else:
            rs = Resampler(rate, MOSHI_SAMPLE_RATE)
            self._pcm = np.concatenate([rs.process(agent), rs.flush()]).astype(np.float32)
        self._text = sorted(text)
        self._text_i = 0
        self._frames = 0
        self._queue: asyncio.Queue[TransportEvent | None] = asyncio.Queue()
        self._open = False
        self._closed = False
        self.frames_in = 0

    async def open(self, call_id: str) -> str:
        self._open = True
        return f"scripted-{next(_ids)}-{call_id}"

    async def send_frame(self, pcm: PCM) -> None:
        if not self._open or self._closed:
            raise LifecycleError("scripted agent: send_frame() outside an open session")
        if pcm.shape != (MOSHI_FRAME_SAMPLES,):
            raise ValueError(f"expected {MOSHI_FRAME_SAMPLES} samples, got {pcm.shape}")
        self.frames_in += 1
        n = self._frames
        self._frames += 1
        t_end = (n + 1) * MOSHI_FRAME_MS
        # Text leads audio in Moshi (text, then the acoustic delay): send it with its frame.
        while self._text_i < len(self._text) and self._text[self._text_i][0] < t_end:
            self._queue.put_nowait(AgentText(self._text[self._text_i][1]))
            self._text_i += 1
        frame = self._pcm[n * MOSHI_FRAME_SAMPLES : (n + 1) * MOSHI_FRAME_SAMPLES]
        if len(frame) < MOSHI_FRAME_SAMPLES:
            frame = np.pad(frame, (0, MOSHI_FRAME_SAMPLES - len(frame)))
        self._queue.put_nowait(AgentAudio(frame))

    async def receive(self) -> AsyncIterator[TransportEvent]:
        async for event in queued_events(self._queue):
            yield event

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(PeerClosed(1000, "closed by client", True))

    def vanish(self) -> None:
        """Simulate a peer that disappears mid-call (no close frame)."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(PeerClosed(None, "connection lost", False))

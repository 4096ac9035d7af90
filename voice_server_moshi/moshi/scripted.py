"""The scripted Moshi peer: one in-memory :class:`MoshiTransport` for tests, the corpus
runner, ``call --scripted-agent`` and the benchmarks (like httpx's ``MockTransport``).

Like Moshi it is clocked by its input: every caller frame sent yields one 80 ms agent frame
(after ``delay_frames`` frames). What the agent says is, in order of precedence:

* a script (``agent`` PCM at ``rate``, plus ``text`` pieces ``(call ms, ' word')``): frame
  ``n`` of the script, silence past its end, and the text pieces due in that frame, sent
  before its audio as Moshi's text leads its audio;
* ``echo=True`` (the default without a script): the caller's own frame back, so a test can
  check the whole audio path end to end;
* ``echo=False``: silence.

Tests deliver peer events with :meth:`push`, make the peer vanish with :meth:`vanish`, and
read what was sent in :attr:`sent` (kept unless ``keep_sent=False``, as the corpus runner
sets for long calls).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Sequence

import numpy as np
import numpy.typing as npt

from ..audio.resample import Resampler
from ..errors import LifecycleError
from .transport import (
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

__all__ = ["ScriptedTransport"]

_ids = itertools.count(1)


class ScriptedTransport(MoshiTransport):
    """A scripted Moshi peer (see the module docstring)."""

    def __init__(
        self,
        agent: npt.NDArray[np.float32] | None = None,
        rate: int = 8000,
        text: Sequence[tuple[float, str]] = (),
        *,
        echo: bool | None = None,
        delay_frames: int = 0,
        session_id: str | None = None,
        open_error: BaseException | None = None,
        keep_sent: bool = True,
    ) -> None:
        self._pcm: npt.NDArray[np.float32] | None = None
        if agent is not None:
            if rate == MOSHI_SAMPLE_RATE:
                self._pcm = np.asarray(agent, dtype=np.float32)
            else:
                rs = Resampler(rate, MOSHI_SAMPLE_RATE)
                self._pcm = np.concatenate([rs.process(agent), rs.flush()]).astype(np.float32)
        self.echo = (agent is None) if echo is None else echo
        self._text = sorted(text)
        self._text_i = 0
        self.delay_frames = delay_frames
        self.session_id = session_id
        self.open_error = open_error
        self.keep_sent = keep_sent
        #: Every caller frame received, in order (when ``keep_sent``).
        self.sent: list[PCM] = []
        #: Caller frames received.
        self.frames_in = 0
        self.opened_with: str | None = None
        self.closed = False
        self._pending: deque[PCM] = deque()
        self._events: asyncio.Queue[TransportEvent | None] = asyncio.Queue()

    async def open(self, call_id: str) -> str:
        if self.open_error is not None:
            raise self.open_error
        self.opened_with = call_id
        return self.session_id or f"scripted-{next(_ids)}-{call_id}"

    async def send_frame(self, pcm: PCM) -> None:
        if self.opened_with is None:
            raise LifecycleError("scripted peer: send_frame() before open()")
        if pcm.dtype != np.float32 or pcm.shape != (MOSHI_FRAME_SAMPLES,):
            raise ValueError(f"expected {MOSHI_FRAME_SAMPLES} float32 samples, got "
                             f"{pcm.dtype} {pcm.shape}")
        if self.closed:
            return  # a frame still on its way when we closed: dropped, like a socket's
        n = self.frames_in
        self.frames_in += 1
        if self.keep_sent:
            self.sent.append(pcm.copy())
        # Text leads audio in Moshi (text, then the acoustic delay): send it with its frame.
        t_end = (n + 1) * MOSHI_FRAME_MS
        while self._text_i < len(self._text) and self._text[self._text_i][0] < t_end:
            self._events.put_nowait(AgentText(self._text[self._text_i][1]))
            self._text_i += 1
        self._pending.append(self._agent_frame(n, pcm))
        if len(self._pending) > self.delay_frames:
            self._events.put_nowait(AgentAudio(self._pending.popleft()))

    def _agent_frame(self, n: int, caller: PCM) -> PCM:
        if self._pcm is not None:
            frame = self._pcm[n * MOSHI_FRAME_SAMPLES : (n + 1) * MOSHI_FRAME_SAMPLES]
            if len(frame) < MOSHI_FRAME_SAMPLES:
                frame = np.pad(frame, (0, MOSHI_FRAME_SAMPLES - len(frame)))
            return frame
        return caller.copy() if self.echo else np.zeros_like(caller)

    def push(self, event: TransportEvent) -> None:
        """Deliver an event as if the peer had sent it."""
        self._events.put_nowait(event)

    async def receive(self) -> AsyncIterator[TransportEvent]:
        async for event in queued_events(self._events):
            yield event

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._events.put_nowait(PeerClosed(1000, "closed by client", True))

    def vanish(self) -> None:
        """Simulate a peer that disappears mid-call (no close frame)."""
        if not self.closed:
            self.closed = True
            self._events.put_nowait(PeerClosed(None, "connection lost", False))

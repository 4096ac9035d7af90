"""One call on an engine, seen from asyncio: frames in, agent outputs out.

The engine's tick thread hands each output to :meth:`EngineCall._sink`, which only
posts it to its event loop's mailbox (one wake-up per tick for all the calls on that loop,
:mod:`.loop_mailbox`); the loop then
appends it to a bounded queue that drops the oldest item when the consumer is slow, so a
stuck consumer costs at most ``max_queued`` frames of memory and never stalls the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from .._log import get_logger
from .call_sampling import CallSampling
from .core import Engine
from .loop_mailbox import LoopMailbox, mailbox_for
from .persona import PersonaPrompt
from .slot import PCM, Slot, SlotError, SlotEvent, SttOutput
from .steering import SlotSteering

log = get_logger(__name__)

#: About 12 s of 80 ms frames.
DEFAULT_MAX_QUEUED = 150


class EngineCall:
    """A call's slot plus its output queue. Use from one event loop."""

    def __init__(self, engine: Engine, call_id: str, *,
                 max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.engine = engine
        self.call_id = call_id
        self.max_queued = max_queued
        self.slot: Slot | None = None
        self.dropped_outputs = 0
        self._mailbox: LoopMailbox | None = None
        self._queue: deque[SlotEvent] = deque()
        self._has_items = asyncio.Event()
        self._space = asyncio.Event()
        self._ended = False
        #: send_paced's clock: when its first frame came, and how many came since.
        self._paced_t0: float | None = None
        self._paced_frames = 0
        self.log = log.bind(call_id=call_id)

    async def open(self, wait_s: float = 0.0, sampling: CallSampling | None = None,
                   persona: PersonaPrompt | None = None) -> Slot:
        """Take a slot (waiting up to ``wait_s``); raises ServerBusyError when none frees,
        PersonaError (before taking one) when the model cannot take ``persona``. With a
        persona, returns once its prompt is in the row (prefilled, or from the cache)."""
        if self.slot is not None or self._ended:
            raise RuntimeError("EngineCall.open() may be called once")
        self._mailbox = mailbox_for(asyncio.get_running_loop())
        self.slot = await self.engine.open(self.call_id, self._sink, wait_s, sampling,
                                           persona)
        await self.engine.prompt_ready(self.slot)
        self.log = self.log.bind(slot=self.slot.index)
        return self.slot

    @contextlib.asynccontextmanager
    async def admitted(self, wait_s: float = 0.0,
                       sampling: CallSampling | None = None) -> AsyncIterator[Slot]:
        """``async with call.admitted():`` the slot, released on every way out (an
        exception, a cancellation, a log call that fails): nothing runs between taking it
        and the ``try``. Raises ServerBusyError, holding nothing, when none frees."""
        slot = await self.open(wait_s, sampling)
        try:
            yield slot
        finally:
            self.close()

    def send(self, pcm: PCM) -> None:
        """Queue one 80 ms caller frame (see :meth:`Slot.push`)."""
        if self.slot is None:
            raise RuntimeError("send() before open()")
        if self._ended:
            return
        self.slot.push(pcm)

    async def send_paced(self, pcm: PCM) -> None:
        """Like :meth:`send`, but first wait while the slot's input queue is full, so a
        sender faster than real time is slowed to the engine's clock instead of losing
        audio to overruns (the embedded transport; a network server drops instead)."""
        if self.slot is None:
            raise RuntimeError("send_paced() before open()")
        limit = self.engine.config.queue_frames
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._paced_t0 is None:
            self._paced_t0 = now
        # A sender behind real time (catching up after a stall upstream) is not paced:
        # its oldest frames are stale, so the engine drops them (overrun, then trimmed)
        # and latency recovers. One ahead of real time (a file, a test) waits for room and
        # loses nothing: the engine does not trim a slot whose sender it is pacing.
        tick = self.engine.config.tick_s
        behind_s = (now - self._paced_t0) - self._paced_frames * tick
        self._paced_frames += 1
        catching_up, ahead = behind_s > 2 * tick, behind_s < -tick
        while (not catching_up and not self._ended and not self.slot.closed
               and self.slot.queued >= limit):
            if ahead:
                self.slot.sender_waits()
            self._space.clear()
            # Woken by the next output (a frame was consumed); the timeout covers ticks
            # that consume without output (the first frame, silence fills).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), self.engine.config.tick_s)
        self.send(pcm)

    # -- steering (ADR 0070) -------------------------------------------------------------

    def say_text(self, text: str, request_id: str | None = None) -> str:
        """Have the agent say ``text`` (queued after earlier requests); returns its id.
        Raises :class:`~.steering.SteeringError` for text that cannot be said."""
        return self._steering().say_text(text, request_id)

    async def say_audio(self, pcm: PCM, text: str = "", request_id: str | None = None) -> str:
        """Have the agent say 24 kHz mono ``pcm`` (float or int16) whose words are
        ``text``: the clip is Mimi-encoded off the event loop, then queued."""
        from .steering_audio import clip_encoder

        steering = self._steering()
        clip = await asyncio.to_thread(clip_encoder(self.engine).encode, pcm)
        return steering.say_codes(clip.codes, text, voiced=clip.voiced, request_id=request_id)

    def cancel_say(self, flush: bool = True) -> list[str]:
        """Stop the request being said at the next step (and with ``flush`` the queued ones)."""
        return self._steering().cancel(flush)

    def _steering(self) -> SlotSteering:
        if self.slot is None:
            raise RuntimeError("steering before open()")
        return self.slot.steering

    async def events(self) -> AsyncIterator[SlotEvent]:
        """Outputs in order; ends after a :class:`SlotError` or after :meth:`close`."""
        while True:
            while self._queue:
                ev = self._queue.popleft()
                yield ev
                if isinstance(ev, SlotError):
                    return
            if self._ended:
                return
            self._has_items.clear()
            await self._has_items.wait()

    def flush_caller(self) -> None:
        """The call's audio has ended: leave the engine, and let the caller transcript's
        last words come through :meth:`events`, up to a ``final`` :class:`SttOutput`
        (at once when the engine has no STT or the call never ran)."""
        if self.slot is None or self._ended:
            return
        if not self.engine.finish(self.slot):
            self._deliver(SttOutput(0, None, -1, final=True))

    def close(self) -> None:
        """Leave the engine; idempotent; ends :meth:`events`."""
        self._ended = True
        if self.slot is not None:
            self.slot.close()
        self._has_items.set()
        self._space.set()

    @property
    def closed(self) -> bool:
        return self._ended

    # -- engine thread side --------------------------------------------------------------

    def _sink(self, event: SlotEvent) -> None:
        box = self._mailbox
        if box is None:
            return
        # Raises RuntimeError if the loop is closed; the engine then frees the slot.
        box.post(self._deliver, event)

    def _deliver(self, event: SlotEvent) -> None:
        if self._ended and not isinstance(event, SlotError):
            return
        self._queue.append(event)
        if isinstance(event, SlotError):
            self._ended = True
        while len(self._queue) > self.max_queued:
            # Drop the oldest output, never the error that ends the call.
            if isinstance(self._queue[0], SlotError):
                break
            self._queue.popleft()
            self.dropped_outputs += 1
        self._has_items.set()
        self._space.set()

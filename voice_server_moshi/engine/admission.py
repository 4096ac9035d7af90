"""Admission: how a call gets a row of the batch and gives it back.

A call takes a free slot at once (:meth:`SlotAdmission.try_open`) or waits for one in FIFO
order (:meth:`SlotAdmission.open`); releasing a slot wakes the first waiter, on its own
event loop. A refusal raises :class:`~voice_server_moshi.errors.ServerBusyError` and is
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ServerBusyError
from .call_sampling import CallSampling
from .config import EngineConfig
from .slot import Sink, Slot, SlotError
from .steering import SteeringSpec

if TYPE_CHECKING:
    from .persona import PersonaPrompt
    from .persona_run import PromptRun


class SlotAdmission:
    """The slot table half of :class:`~voice_server_moshi.engine.core.Engine` (the engine
    sets these attributes up in its ``__init__``), and what each :class:`Slot` is given of
    its engine (:class:`~.slot.SlotTable`)."""

    config: EngineConfig
    _lock: threading.Lock
    _slots: list[Slot | None]
    _waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
    _calls_started: int
    _calls_refused: int
    #: Set when a frame arrives, to wake an idle tick thread.
    _wake: threading.Event
    _underruns: int
    _overruns: int
    #: What steering needs of the model (each slot gets its own queue; ADR 0070).
    steering_spec: SteeringSpec
    #: What a call that brings no sampling of its own gets (seeds drawn per call).
    default_sampling: CallSampling
    _trimmed: int

    #: persona_engine.PersonaPrefill's: the checked prompt's run, None without one.
    _prompt_run: Callable[[PersonaPrompt | None], PromptRun | None]

    # -- what a slot needs of its engine (slot.SlotTable) -----------------------------

    @property
    def lock(self) -> threading.Lock:
        """The lock over the slot table, every slot's queue and the totals."""
        return self._lock

    def wake(self) -> None:
        """Wake an idle tick thread: a frame has arrived."""
        self._wake.set()

    def count_overrun(self) -> None:
        self._overruns += 1

    def count_underrun(self) -> None:
        self._underruns += 1

    def count_trimmed(self, frames: int) -> None:
        self._trimmed += frames

    def try_open(self, call_id: str, sink: Sink,
                 sampling: CallSampling | None = None,
                 persona: PersonaPrompt | None = None) -> Slot:
        """Take a free slot now, or raise :class:`ServerBusyError`. ``sampling``: this
        call's (validated) sampling; None takes the engine's default with fresh seeds.
        ``persona``: its persona prompt (PersonaPlex, ADR 0130), checked before a slot is
        taken (:class:`~.persona.PersonaError`); wait for :meth:`prompt_ready` before the
        handshake."""
        run = self._prompt_run(persona)
        slot = self._take_slot(call_id, sink, sampling, run)
        if slot is None:
            with self._lock:
                self._calls_refused += 1
            raise ServerBusyError(
                f"all {self.config.slots} engine slots are busy; try again later or raise "
                "'slots' (memory per slot grows with 'context')"
            )
        return slot

    async def open(self, call_id: str, sink: Sink, wait_s: float = 0.0,
                   sampling: CallSampling | None = None,
                   persona: PersonaPrompt | None = None) -> Slot:
        """Take a slot, waiting up to ``wait_s`` seconds for one to free up (FIFO);
        ``persona`` as for :meth:`try_open` (checked before waiting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_s)
        self._prompt_run(persona)  # an unusable prompt is refused before any wait
        while True:
            slot = self._take_slot(call_id, sink, sampling, self._prompt_run(persona))
            if slot is not None:
                return slot
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self.try_open(call_id, sink, sampling, persona)  # raises, counting it
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiters.append((loop, fut))
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, remaining)
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, fut))

    def _take_slot(self, call_id: str, sink: Sink, sampling: CallSampling | None = None,
                   run: PromptRun | None = None) -> Slot | None:
        seeded = (sampling or self.default_sampling).seeded()
        with self._lock:
            for i, s in enumerate(self._slots):
                if s is None:
                    slot = Slot(self, i, call_id, sink)
                    slot.sampling = seeded
                    slot.prompt_run = run
                    self._slots[i] = slot
                    self._calls_started += 1
                    break
            else:
                return None
        # Outside the lock, and never raising: the caller owns the slot from here on.
        with contextlib.suppress(Exception):
            slot.log.info("slot opened")
        return slot

    def release(self, slot: Slot) -> None:
        """Free ``slot``'s row (the next call in it resets it first). Idempotent."""
        with self._lock:
            if slot.closed:
                return
            slot.state = "closed"
            slot._queue.clear()
            if self._slots[slot.index] is slot:
                self._slots[slot.index] = None
            run = slot.prompt_run
            prompt_waiters = [] if run is None or run.done.is_set() else run.waiters
            if run is not None:
                run.done.set()  # abandoned: whoever waits for it sees the slot closed
                run.waiters = []
            waiter = None
            while self._waiters:
                loop, fut = self._waiters.popleft()
                if not fut.done():
                    waiter = (loop, fut)
                    break
        with contextlib.suppress(Exception):  # a dead log sink must not stop a release
            slot.log.info("slot released", frames_in=slot.frames_in,
                          frames_out=slot.frames_out, underruns=slot.underruns,
                          overruns=slot.overruns, trimmed=slot.trimmed)
        for loop, fut in prompt_waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut)
        if waiter is not None:
            loop, fut = waiter
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, fut)

    def _fail(self, slot: Slot, message: str) -> None:
        if slot.closed:
            return
        self.release(slot)
        try:
            slot.sink(SlotError(message))
        except Exception:
            with contextlib.suppress(Exception):
                slot.log.exception("sink failed while reporting an error")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

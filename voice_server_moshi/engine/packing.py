"""Rows of the engine's batch as things that move: a call's row state can be moved to
another row, snapshotted and restored (:mod:`.row_state`, ADR 0135).

:class:`RowPacking` is the half of :class:`~voice_server_moshi.engine.core.Engine` that does
this; the engine sets the attributes up in its ``__init__``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from .batch_width import BatchWidth, buckets_for, width_parts
from .row_state import RowHolder, RowLayout, RowSnapshot

if TYPE_CHECKING:
    from .row_sampler import RowSampler
    from .slot import Slot
    from .steering_hooks import SteeringHooks
    from .stt import SttBatch

__all__ = ["RowPacking", "RowSnapshot", "engine_rows"]


def engine_rows(slots: int, device: torch.device, live_rows_only: bool, mimi: Any,
                lm_gen: Any, steer: SteeringHooks, sampler: RowSampler | None,
                stt: SttBatch | None) -> tuple[RowLayout, BatchWidth]:
    """Every per-row state of an engine (its models must be streaming already), and the
    :class:`BatchWidth` that narrows it and everything else that has the batch size."""
    roots: list[tuple[str, Any]] = [("mimi", mimi), ("lm", lm_gen)]
    holders = [RowHolder("steering", steer, tensors=steer.ROW_TENSORS)]
    sized: list[tuple[Any, str, tuple[str, ...]]] = [(steer, "batch", ())]
    if sampler is not None:
        holders.append(RowHolder("sampler", sampler, tensors=sampler.ROW_TENSORS,
                                 lists=sampler.ROW_LISTS, on_change=sampler.refresh))
        sized.append((sampler, "batch", ("_exec",)))
    if stt is not None:
        roots.append(("stt", stt.lm_gen))
        holders.append(RowHolder("stt", stt, lists=stt.ROW_LISTS))
        sized.append((stt, "batch", ("_none",)))
    layout = RowLayout(roots, holders)
    scratch, batch_sizes, graphed = width_parts([r for _, r in roots], sized)
    buckets = buckets_for(slots, device) if live_rows_only else (slots,)
    return layout, BatchWidth(slots, [*layout.fields, *scratch], batch_sizes, graphed, buckets)


class RowPacking:
    """Moving, snapshotting and restoring a call's row."""

    _lock: threading.Lock
    _tick_lock: threading.Lock
    _slots: list[Slot | None]
    _stt_flush: list[Slot]
    rows: RowLayout
    _batch: BatchWidth
    #: Calls moved to a lower row so far (one per departure below the last live row).
    row_moves: int = 0
    sampler: RowSampler | None
    stt: SttBatch | None

    def _torch_context(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    @contextlib.contextmanager
    def _row_work(self) -> Iterator[None]:
        with self._tick_lock, self._torch_context():
            yield

    def snapshot_row(self, slot: Slot) -> RowSnapshot:
        """A copy of ``slot``'s row state as it is between ticks (e.g. after a prompt's
        prefill), to :meth:`restore_row` into another call. Waits for a running tick."""
        with self._row_work():
            row = self._row_of(slot)
            self._batch.cover(row + 1)
            return self.rows.snapshot(row)

    def restore_row(self, slot: Slot, snap: RowSnapshot) -> None:
        """Start ``slot``'s call from ``snap``: its first frame continues the snapshotted
        stream (no reset), as if it had been the call that was snapshotted. The call keeps
        its own sampling (settings and seeds; counters restart) and its STT steps count from
        its own first frame. Call before the call's first frame is ticked. Raises
        ValueError if the snapshot is of other models, RuntimeError if the call started."""
        with self._row_work():
            row = self._row_of(slot)
            self._batch.cover(row + 1)
            if not slot._first:
                raise RuntimeError(f"call {slot.call_id} has started; restore a row before "
                                   "its first frame")
            self.rows.restore(snap, row)
            slot._first = False
            if self.sampler is not None and slot.sampling is not None:
                self.sampler.set_row(row, slot.sampling)
            if self.stt is not None:
                self.stt._steps[row] = 0

    def _row_of(self, slot: Slot) -> int:
        with self._lock:
            if slot.closed or self._slots[slot.index] is not slot:
                raise RuntimeError(f"call {slot.call_id} holds no row")
            return slot.index

    def _move(self, slot: Slot, dst: int) -> bool:
        """Move ``slot`` to the free row ``dst`` (tick lock held): the slot table under the
        engine lock, then the state copy. False if ``slot`` or ``dst`` is no longer as
        expected (the call left meanwhile, or ``dst`` was taken or awaits an STT flush)."""
        with self._lock:
            src = slot.index
            if (slot.closed or self._slots[src] is not slot or self._slots[dst] is not None
                    or any(f.index == dst for f in self._stt_flush)):
                return False
            self._slots[dst], self._slots[src] = slot, None
            slot.index = dst
            slot.log = slot.log.bind(slot=dst)
            # A persona prompt (ADR 0130) steps the row before the call's first frame.
            stepped = not slot._first or slot.prompt_run is not None
        if stepped:  # a call that never stepped resets its row on its first frame
            self._batch.cover(src + 1)
            self.rows.copy(src, dst)
        self.row_moves += 1
        return True

    def _pack(self) -> int:
        """Keep the live calls in the first rows (tick lock held): while a row below the
        last live one is free, move the last live call into it, one state copy per call
        that left (never per tick). Rows awaiting an STT flush are skipped until flushed.
        Returns the moves made."""
        moves = 0
        for _ in range(len(self._slots)):
            with self._lock:
                flush = {f.index for f in self._stt_flush}
                live = [i for i, s in enumerate(self._slots) if s is not None]
                holes = [i for i, s in enumerate(self._slots[:live[-1]] if live else [])
                         if s is None and i not in flush]
                if not holes:
                    return moves
                slot = self._slots[live[-1]]
            assert slot is not None
            moves += self._move(slot, holes[0])
        return moves

"""One batch row's complete streaming state: copy or move it to another row, or snapshot it
into a standalone object and restore it into any row (of this engine or another with the
same models, whatever its slot count).

What a row is made of (ADR 0135):

* the ``moshi`` streaming state of every module that is streaming now, found by walking the
  module trees (``named_modules``, so detached sub-trees such as ``LMGen.lm_model`` are
  included): per-row tensors are the state dataclass's tensor fields whose first dimension
  is the batch (Mimi's conv ``previous``/``first``/``partial``; the transformers'
  ``offset(s)``; ``LMGen``'s delayed-token ``cache`` and ``offsets``; every state's
  ``exec_mask``), and each ``RingKVCache``'s ``cache`` (batch on dim 1) and per-row
  ``end_offset``. Batch-wide scalars (``offset_cpu``) only matter for the depth
  transformer, which streams within one step, and are not part of a row;
* the engine's own per-row holders (:class:`RowHolder`): the row sampler's tensors and each
  row's applied ``CallSampling``, the steering hooks' last text token, the STT rows' step
  counters.

A :class:`RowLayout` lists these once (the state objects live as long as the streaming
context); every operation reads the attributes afresh, because ``moshi`` rebinds some of
them on each step (``LMGen``'s ``offsets``). The Python side of a call (its
:class:`~voice_server_moshi.engine.slot.Slot`: queue, steering requests, counters) is not
here: it follows the call object, the engine only updates ``slot.index``.

All methods do torch work: call them where the engine does its torch work (inside
``Engine.tick``'s lock, e.g. through ``Engine.snapshot_row`` / ``Engine.restore_row``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RowField", "RowHolder", "RowLayout", "RowSnapshot", "streaming_fields"]

#: State fields that are not per row although their first dimension may equal the batch.
_SHARED_FIELDS = frozenset({"initial", "cfg_is_masked_until"})


@dataclass(frozen=True, slots=True)
class RowField:
    """One per-row tensor: ``getattr(owner, attr)``, the batch on dimension ``dim``."""

    key: str
    owner: Any
    attr: str
    dim: int

    def tensor(self) -> torch.Tensor:
        t: torch.Tensor = getattr(self.owner, self.attr)
        return t

    def row(self, row: int) -> torch.Tensor:
        return self.tensor().select(self.dim, row)


@dataclass(frozen=True)
class RowHolder:
    """Per-row state the engine keeps outside ``moshi``: tensor attributes with the batch on
    dim 0 (``tensors``), Python lists indexed by row holding immutable values (``lists``),
    and ``on_change`` to run after a row of it was overwritten (derived values)."""

    name: str
    obj: Any
    tensors: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()
    on_change: Callable[[], None] | None = None


def _state_fields(key: str, state: Any) -> Iterator[RowField]:
    from moshi.modules.transformer import RingKVCache

    b = int(state.batch_size)
    yield RowField(f"{key}.exec_mask", state, "exec_mask", 0)
    for f in dataclasses.fields(state):
        if f.name in _SHARED_FIELDS:
            continue
        v = getattr(state, f.name)
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == b:
            yield RowField(f"{key}.{f.name}", state, f.name, 0)
        elif isinstance(v, RingKVCache):
            yield RowField(f"{key}.{f.name}.cache", v, "cache", 1)
            if v.respect_exec_mask:  # otherwise one offset for the whole batch
                yield RowField(f"{key}.{f.name}.end_offset", v, "end_offset", 0)


def streaming_fields(name: str, root: Any) -> list[RowField]:
    """Every per-row tensor of ``root``'s streaming modules that are streaming now."""
    from moshi.modules.streaming import StreamingModule

    out: list[RowField] = []
    for path, m in root.named_modules():
        if isinstance(m, StreamingModule) and m._streaming_state is not None:
            out.extend(_state_fields(f"{name}/{path}", m._streaming_state))
    return out


@dataclass(frozen=True)
class RowSnapshot:
    """One row's state, detached from any batch: ``tensors`` maps each field's key to the
    row's slice (batch dimension removed, a copy), ``values`` each per-row list entry."""

    tensors: dict[str, torch.Tensor]
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to(self, device: torch.device | str) -> RowSnapshot:
        """The same snapshot on ``device`` (e.g. ``cpu`` to keep many of them)."""
        return RowSnapshot({k: t.to(device) for k, t in self.tensors.items()},
                           dict(self.values))


class RowLayout:
    """The per-row state of one batch: ``roots`` (name -> streaming module, e.g. Mimi and
    ``LMGen``, already in streaming mode) and ``holders``.

    :meth:`copy` (``dst`` becomes ``src``; moving a call is a copy then the engine forgets
    ``src``), :meth:`snapshot` and :meth:`restore` cover every field; a snapshot restores
    into a layout with the same keys and row shapes, whatever its batch size."""

    def __init__(self, roots: Sequence[tuple[str, Any]],
                 holders: Sequence[RowHolder] = ()) -> None:
        fields: list[RowField] = []
        for name, root in roots:
            fields.extend(streaming_fields(name, root))
        for h in holders:
            fields.extend(RowField(f"{h.name}.{a}", h.obj, a, 0) for a in h.tensors)
        keys = [f.key for f in fields]
        if len(set(keys)) != len(keys):
            raise ValueError("row state keys collide; give each root a distinct name")
        self.fields: tuple[RowField, ...] = tuple(fields)
        self.holders: tuple[RowHolder, ...] = tuple(holders)

    def _changed(self) -> None:
        for h in self.holders:
            if h.on_change is not None:
                h.on_change()

    def copy(self, src: int, dst: int) -> None:
        """Make row ``dst`` an exact copy of row ``src`` (both stay valid)."""
        if src == dst:
            return
        for f in self.fields:
            t = f.tensor()
            t.select(f.dim, dst).copy_(t.select(f.dim, src))
        for h in self.holders:
            for a in h.lists:
                lst = getattr(h.obj, a)
                lst[dst] = lst[src]
        self._changed()

    def snapshot(self, row: int) -> RowSnapshot:
        """A copy of row ``row``'s state, independent of the batch from now on."""
        tensors = {f.key: f.row(row).clone() for f in self.fields}
        values = {f"{h.name}.{a}": getattr(h.obj, a)[row] for h in self.holders
                  for a in h.lists}
        return RowSnapshot(tensors, values)

    def restore(self, snap: RowSnapshot, row: int) -> None:
        """Put ``snap`` into row ``row``; the row then steps exactly as the snapshotted one
        would have. Raises ValueError (changing nothing) if the snapshot is of another
        layout (other models, another STT)."""
        want = {f.key for f in self.fields}
        lists = {f"{h.name}.{a}" for h in self.holders for a in h.lists}
        if set(snap.tensors) != want or set(snap.values) != lists:
            missing = sorted((want - set(snap.tensors)) | (lists - set(snap.values)))
            extra = sorted((set(snap.tensors) - want) | (set(snap.values) - lists))
            raise ValueError(f"row snapshot does not fit this engine (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        for f in self.fields:
            dst, src = f.row(row), snap.tensors[f.key]
            if dst.shape != src.shape or dst.dtype != src.dtype:
                raise ValueError(f"row snapshot field {f.key} is {tuple(src.shape)} "
                                 f"{src.dtype}, this engine's is {tuple(dst.shape)} {dst.dtype}")
        for f in self.fields:
            f.row(row).copy_(snap.tensors[f.key])
        for h in self.holders:
            for a in h.lists:
                getattr(h.obj, a)[row] = snap.values[f"{h.name}.{a}"]
        self._changed()

"""Step only the first k rows of the batch (ADR 0135): a tick costs the live calls, not the
configured slots.

``moshi``'s streaming modules are built for one batch size: every state tensor has the batch
as a dimension, ``LMGen`` asserts ``B == batch_size``. They do not care *which* tensors they
hold, though, so :class:`BatchWidth` narrows the batch in place: every per-row tensor
(:class:`~.row_state.RowLayout`'s fields, plus per-step scratch tensors) is replaced by a
view of its first k rows of the full-size tensor allocated when streaming started, and
every ``batch_size``/``batch`` attribute is set to k. Views share storage, so no state is
copied; memory stays that of the full batch.

``moshi`` rebinds a few state attributes on each step instead of writing into them
(``LMGen``'s ``offsets``): before changing width, any attribute that is no longer the view
it was given is copied back into the full tensor. CUDA graphs are captured per width
(``moshi`` captures on first use; the engine warms every bucket up), so on GPU the widths
are buckets (powers of two and the full size) and on CPU every width is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .row_state import RowField

__all__ = ["BatchWidth", "buckets_for"]


def buckets_for(full: int, device: torch.device) -> tuple[int, ...]:
    """The widths a batch of ``full`` rows runs at: every width on CPU; on CUDA powers of
    two and ``full`` (each width captures its own CUDA graphs)."""
    if device.type != "cuda":
        return tuple(range(1, full + 1))
    out = {full}
    k = 1
    while k < full:
        out.add(k)
        k *= 2
    return tuple(sorted(out))


class BatchWidth:
    """The width (rows stepped) of one engine's batch; starts at the full size."""

    def __init__(self, full: int, fields: Sequence[RowField], sized: Sequence[tuple[Any, str]],
                 graphed: Sequence[tuple[Any, str]], buckets: Sequence[int]) -> None:
        self.full = full
        self.buckets = tuple(buckets)
        if not self.buckets or self.buckets[-1] != full:
            raise ValueError(f"width buckets {self.buckets} must end at the batch size {full}")
        self._fields = [(f.owner, f.attr, f.dim, f.tensor()) for f in fields]
        self._given: list[torch.Tensor] = [canon for *_, canon in self._fields]
        self._sized = list(sized)
        self._graphed = list(graphed)
        # Per width, each graphed attribute's CUDAGraphed (captured for that width).
        self._graphs: dict[int, list[Any]] = {full: [getattr(o, a) for o, a in graphed]}
        self.width = full
        #: Width changes so far (each one a pass over the state attributes).
        self.changes = 0

    def bucket(self, rows: int) -> int:
        """The smallest width that holds ``rows`` rows (at least 1)."""
        for b in self.buckets:
            if b >= rows:
                return b
        raise ValueError(f"{rows} rows do not fit a batch of {self.full}")

    def cover(self, rows: int) -> None:
        """Widen, if needed, so that rows ``0 .. rows - 1`` are stepped and addressable."""
        if rows > self.width:
            self.set(self.bucket(rows))

    def set(self, width: int) -> None:
        """Step the first ``width`` rows from now on (``width`` must be a bucket)."""
        if width == self.width:
            return
        if width not in self.buckets:
            raise ValueError(f"width {width} is not one of {self.buckets}")
        for i, (owner, attr, dim, canon) in enumerate(self._fields):
            cur = getattr(owner, attr)
            if cur is not self._given[i]:
                self._given[i].copy_(cur)  # moshi rebound it: keep what it holds
            view = canon if width == self.full else canon.narrow(dim, 0, width)
            setattr(owner, attr, view)
            self._given[i] = view
        for owner, attr in self._sized:
            setattr(owner, attr, width)
        self._graphs[self.width] = [getattr(o, a) for o, a in self._graphed]
        graphs = self._graphs.get(width)
        if graphs is None:  # this width's graphs are captured on first use
            graphs = [None if g is None else type(g)(g.func, disable=g.disable)
                      for g in self._graphs[self.width]]
        for (owner, attr), g in zip(self._graphed, graphs, strict=True):
            setattr(owner, attr, g)
        self.width = width
        self.changes += 1


def width_parts(roots: Sequence[Any], holders: Sequence[tuple[Any, str, tuple[str, ...]]]
                ) -> tuple[list[RowField], list[tuple[Any, str]], list[tuple[Any, str]]]:
    """What :class:`BatchWidth` narrows besides the row fields: per-step scratch tensors
    (``holders``: object, its batch-size attribute, its scratch tensor attributes), every
    streaming state's ``batch_size``, and its CUDA-graphed callables (captured per shape)."""
    from moshi.modules.streaming import StreamingModule
    from moshi.utils.compile import CUDAGraphed

    scratch: list[RowField] = []
    sized: list[tuple[Any, str]] = []
    graphed: list[tuple[Any, str]] = []
    for root in roots:
        for _, m in root.named_modules():
            st = m._streaming_state if isinstance(m, StreamingModule) else None
            if st is None:
                continue
            sized.append((st, "batch_size"))
            names = {k for k, v in vars(st).items() if isinstance(v, CUDAGraphed)}
            graphed.extend((st, k) for k in sorted(names | {"_set_exec_mask_graphed"}))
    for obj, batch_attr, tensors in holders:
        sized.append((obj, batch_attr))
        scratch.extend(RowField(f"scratch.{a}", obj, a, 0) for a in tensors)
    return scratch, sized, graphed

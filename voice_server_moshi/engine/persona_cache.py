"""The prompt cache (ADR 0130): the LM's row state after a prompt's prefill, by checkpoint,
voice and persona, so a prompt seen before starts a call at once.

What is kept is the ``LMGen`` row (its token cache and offsets, and every attention layer's
key/value rows, cut to the prompt's length: the rest of the ring is never read before it is
written) and the steering hooks' last token. Bounded by bytes, least recently used first
out; counted for ``/metrics``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .row_state import RowLayout

#: Default bound of the cache (a 7B PersonaPlex prompt of ~200 steps is ~100 MiB of keys
#: and values in bfloat16; the dev checkpoint's, a few hundred kB).
DEFAULT_CACHE_BYTES = 2 << 30


@dataclass(frozen=True, slots=True)
class PromptKey:
    checkpoint: str
    voice: str
    text: str | None


@dataclass(frozen=True, slots=True)
class PromptState:
    """One row's LM state after a prompt of ``steps`` steps (tensors on the engine's device)."""

    tensors: dict[str, torch.Tensor]
    steps: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def _is_kv(layout_key: str) -> bool:
    return layout_key.endswith(".cache") and "kv_cache" in layout_key


def snapshot_prompt(layout: RowLayout, row: int, steps: int) -> PromptState:
    """Row ``row``'s state right after ``steps`` prompt steps from a reset."""
    out: dict[str, torch.Tensor] = {}
    for f in layout.fields:
        t = f.row(row)
        if _is_kv(f.key):  # [2, heads, capacity, dim]: only the prompt's positions
            if steps >= t.shape[2]:
                raise ValueError(f"a prompt of {steps} steps does not fit a context of "
                                 f"{t.shape[2]}; raise 'context'")
            t = t[:, :, :steps]
        out[f.key] = t.clone()
    return PromptState(out, steps)


def restore_prompt(layout: RowLayout, state: PromptState, row: int) -> None:
    """Put a snapshotted prompt into row ``row`` (its previous state is overwritten)."""
    for f in layout.fields:
        src = state.tensors[f.key]
        dst = f.row(row)
        if _is_kv(f.key):
            dst = dst[:, :, : state.steps]
        dst.copy_(src)


class PromptCache:
    """LRU by bytes. Thread-safe (the tick thread fills it; metrics read it anywhere)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"prompt cache bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[PromptKey, PromptState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.bytes = 0
        #: Prefills run to the end, and their LM time (steps only, not waiting).
        self.prefills = 0
        self.prefill_steps = 0
        self.prefill_seconds = 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: PromptKey) -> PromptState | None:
        with self._lock:
            state = self._items.get(key)
            if state is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return state

    def put(self, key: PromptKey, state: PromptState) -> None:
        size = state.nbytes
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            if size > self.max_bytes:
                return  # larger than the whole cache: not kept
            self._items[key] = state
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1

    def record_prefill(self, steps: int, seconds: float) -> None:
        with self._lock:
            self.prefills += 1
            self.prefill_steps += steps
            self.prefill_seconds += seconds

"""What the engine measures about itself: tick times (a histogram for Prometheus and
recent quantiles), streaming-state and process memory."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .config import EngineConfig
from .gc_pauses import GC_PAUSES, GcPauseStats

if TYPE_CHECKING:
    from .batch_width import BatchWidth
    from .models import LoadedModels
    from .persona_cache import PromptCache
    from .slot import Slot

#: Tick-time histogram buckets (seconds) for the Prometheus metrics.
TICK_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.16, 0.32, 1.0)


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    slots: int
    active_slots: int
    ready: bool
    ticks: int
    late_ticks: int
    underruns: int
    overruns: int
    #: Caller frames dropped to bring a standing backlog back to the target depth.
    trimmed: int
    #: (slot index, caller frames queued) for each active slot: its input latency in ticks.
    input_depths: tuple[tuple[int, int], ...]
    calls_started: int
    calls_refused: int
    tick_count: int
    tick_sum_s: float
    #: Cumulative counts per bucket of :data:`TICK_BUCKETS_S` (Prometheus ``le``).
    tick_buckets: tuple[int, ...]
    tick_p50_s: float | None
    tick_p99_s: float | None
    state_bytes_per_slot: int
    weights_bytes: int
    device_memory_bytes: int | None
    process_rss_bytes: int | None
    device: str
    dtype: str
    #: Personas (ADR 0130): the prompt cache and the prefills (zero without PersonaPlex).
    persona: PromptMetrics = field(default_factory=lambda: PromptMetrics())
    #: Rows the last tick stepped (the live calls, packed first; ADR 0135).
    batch_width: int = 0
    #: Calls moved to a lower row so far (one state copy per departure below the last).
    row_moves: int = 0
    #: The process's garbage-collector pauses (ADR 0150).
    gc: GcPauseStats = field(default_factory=GcPauseStats)


@dataclass(frozen=True, slots=True)
class PromptMetrics:
    """The prompt cache's counters: lookups that hit / missed, entries and bytes kept,
    evictions; prefills run to the end, their LM steps and LM seconds; calls prefilling now."""

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0
    evictions: int = 0
    prefills: int = 0
    prefill_steps: int = 0
    prefill_seconds: float = 0.0
    prefilling: int = 0
    #: Whether the engine's model takes prompts (PersonaPlex).
    enabled: bool = False


class TickTimes:
    """Tick durations: a cumulative histogram over :data:`TICK_BUCKETS_S`, their count and
    sum, and the last 2048 for quantiles. Not thread-safe: the engine holds its lock."""

    def __init__(self) -> None:
        self.ticks = 0
        self.recent: deque[float] = deque(maxlen=2048)
        self.buckets = [0] * len(TICK_BUCKETS_S)
        self.total_s = 0.0

    def record(self, dt: float) -> None:
        self.ticks += 1
        self.recent.append(dt)
        self.total_s += dt
        for b, le in enumerate(TICK_BUCKETS_S):
            if dt <= le:
                self.buckets[b] += 1

    def quantile(self, q: float) -> float | None:
        return quantile(sorted(self.recent), q)


def _tensors_in(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if depth > 3 or obj is None or isinstance(obj, (int, float, str, bool, torch.nn.Module)):
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v, depth + 1)
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from _tensors_in(v, depth + 1)


def streaming_state_bytes(*modules: Any) -> int:
    """Bytes of the streaming state (KV caches, conv buffers, token caches) that
    ``modules`` hold now, each storage counted once; works on the meta device too."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for st in m.get_streaming_state().values():
            for t in _tensors_in(st):
                # Storage identity, except on the meta device (sizing without memory),
                # where every tensor reports pointer 0 and no bytes.
                meta = t.device.type == "meta"
                key = id(t) if meta else t.untyped_storage().data_ptr()
                if key in seen:
                    continue
                seen.add(key)
                total += t.numel() * t.element_size() if meta else t.untyped_storage().nbytes()
    return total


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


class EngineMeasures:
    """The half of :class:`~voice_server_moshi.engine.core.Engine` that reports on it; the
    engine sets these attributes up in its ``__init__``."""

    config: EngineConfig
    device: torch.device
    models: LoadedModels
    _lock: threading.Lock
    _slots: list[Slot | None]
    _tick_stats: TickTimes
    _ready: bool
    _late_ticks: int
    _underruns: int
    _overruns: int
    _trimmed: int
    _calls_started: int
    _calls_refused: int
    _state_bytes: int
    _weights_bytes: int
    _batch: BatchWidth
    row_moves: int
    prompt_cache: PromptCache

    def prompt_metrics(self) -> PromptMetrics:
        """The persona prompt cache and prefills (ADR 0130)."""
        c = self.prompt_cache
        with self._lock:
            prefilling = sum(1 for s in self._slots if s is not None and s.prompt_run
                             is not None and not s.prompt_run.done.is_set())
        return PromptMetrics(c.hits, c.misses, len(c), c.bytes, c.max_bytes, c.evictions,
                             c.prefills, c.prefill_steps, c.prefill_seconds, prefilling,
                             self.models.persona is not None)

    def metrics(self) -> EngineMetrics:
        """A snapshot of the counters, tick times, memory and the prompt cache."""
        persona = self.prompt_metrics()
        with self._lock:
            ticks = self._tick_stats
            times = sorted(ticks.recent)
            return EngineMetrics(
                slots=self.config.slots,
                active_slots=sum(1 for s in self._slots if s is not None),
                ready=self._ready,
                ticks=ticks.ticks,
                late_ticks=self._late_ticks,
                underruns=self._underruns,
                overruns=self._overruns,
                trimmed=self._trimmed,
                input_depths=tuple((s.index, len(s._queue)) for s in self._slots
                                   if s is not None),
                calls_started=self._calls_started,
                calls_refused=self._calls_refused,
                tick_count=ticks.ticks,
                tick_sum_s=ticks.total_s,
                tick_buckets=tuple(ticks.buckets),
                tick_p50_s=quantile(times, 0.5),
                tick_p99_s=quantile(times, 0.99),
                state_bytes_per_slot=self._state_bytes // self.config.slots,
                weights_bytes=self._weights_bytes,
                device_memory_bytes=(torch.cuda.memory_allocated(self.device)
                                     if self.device.type == "cuda" else None),
                process_rss_bytes=rss_bytes(),
                device=str(self.device),
                dtype=str(self.models.dtype).removeprefix("torch."),
                persona=persona,
                batch_width=self._batch.width,
                row_moves=self.row_moves,
                gc=GC_PAUSES.snapshot(),
            )

"""The engine's :meth:`metrics` (a mixin of :class:`~.core.Engine`): a consistent snapshot of
its counters, tick times, memory and the persona prompt cache."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch

from .metrics import EngineMetrics, PromptMetrics, TickTimes, quantile, rss_bytes

if TYPE_CHECKING:
    from .config import EngineConfig
    from .persona_cache import PromptCache
    from .slot import Slot


class MetricsView:
    config: EngineConfig
    models: Any
    device: torch.device
    prompt_cache: PromptCache
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

    def prompt_metrics(self) -> PromptMetrics:
        c = self.prompt_cache
        with self._lock:
            prefilling = sum(1 for s in self._slots if s is not None and s.prompt_run
                             is not None and not s.prompt_run.done.is_set())
        return PromptMetrics(c.hits, c.misses, len(c), c.bytes, c.max_bytes, c.evictions,
                             c.prefills, c.prefill_steps, c.prefill_seconds, prefilling,
                             self.models.persona is not None)

    def metrics(self) -> EngineMetrics:
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
            )

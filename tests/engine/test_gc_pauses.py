"""Collector pauses are timed per generation, and the heap is frozen once per process
(ADR 0150). Torch-free."""

from __future__ import annotations

import gc

from voice_server_moshi.engine import gc_pauses
from voice_server_moshi.server.gc_metrics import gc_families


def test_a_full_collection_is_counted_and_timed_once_however_often_installed() -> None:
    gc_pauses.GC_PAUSES.install()
    gc_pauses.GC_PAUSES.install()
    assert gc.callbacks.count(gc_pauses.GC_PAUSES._callback) == 1
    before = gc_pauses.GC_PAUSES.snapshot()
    gc.collect()
    after = gc_pauses.GC_PAUSES.snapshot()
    assert after.collections[2] == before.collections[2] + 1
    assert after.seconds[2] > before.seconds[2]
    assert after.max_seconds[2] >= after.seconds[2] - before.seconds[2] > 0


def test_the_heap_is_frozen_once_per_process() -> None:
    calls: list[str] = []
    real_freeze, froze = gc.freeze, gc_pauses._froze
    try:
        gc.freeze = lambda: calls.append("freeze")  # type: ignore[assignment]
        gc_pauses._froze = False
        gc_pauses.freeze_heap()
        gc_pauses.freeze_heap()
        assert calls == ["freeze"]
    finally:
        gc.freeze, gc_pauses._froze = real_freeze, froze  # type: ignore[assignment]


def test_families_label_each_generation_and_replica() -> None:
    stats = {"collections": (5, 2, 1), "seconds": (0.001, 0.002, 0.09),
             "max_seconds": (0.0004, 0.001, 0.09), "frozen_objects": 180000}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in gc_families([(("r1",), stats)], ["replica"]) for s in f.samples}
    assert samples[("moshi_process_gc_collections_total",
                    (("generation", "2"), ("replica", "r1")))] == 1
    assert samples[("moshi_process_gc_pause_max_seconds",
                    (("generation", "2"), ("replica", "r1")))] == 0.09
    assert samples[("moshi_process_gc_frozen_objects", (("replica", "r1"),))] == 180000

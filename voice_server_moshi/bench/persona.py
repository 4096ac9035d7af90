"""``bench engine --persona``: what a persona prompt costs (ADR 0130), in one run.

* cold: a prompt never seen, prefilled into the cache (:meth:`Engine.warm`): wall seconds,
  LM steps, ms per step;
* cached: a call with that prompt, from admission to its prompt being in the row;
* co-batched: ``slots - 1`` live calls fed in real time on the engine's own tick thread;
  their tick p99 and output-gap p99 over three windows back to back: no newcomer; a
  newcomer whose prompt is cached (a row more in the batch, no prefill); newcomers whose
  prompts are new, one after another, so a prefill runs through the whole window (the
  same row more, and its prefill steps). The cold / cached ratio is the
  prefill's own cost to the other calls (the machine may be shared: the windows run back
  to back in the same process).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np

from .._log import get_logger

log = get_logger(__name__)


def _p99_ms(values: list[float]) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values) * 1000.0, 99)), 2)


class _Live:
    """Live calls fed a frame each 80 ms of wall clock; output arrival times per call."""

    def __init__(self, eng: Any, n: int) -> None:
        from ..engine.core import FRAME_SAMPLES, SlotOutput

        self.arrivals: list[list[float]] = [[] for _ in range(n)]
        self.slots = []
        for i in range(n):
            def sink(e: Any, i: int = i) -> None:
                if isinstance(e, SlotOutput):
                    self.arrivals[i].append(time.monotonic())
            self.slots.append(eng.try_open(f"live-{i}", sink))
        rng = np.random.default_rng(0)
        self.frame = (0.05 * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        next_t = time.monotonic()
        while not self.stop.is_set():
            for s in self.slots:
                s.push(self.frame)
            next_t += 0.08
            self.stop.wait(max(0.0, next_t - time.monotonic()))

    def gaps(self, t0: float, t1: float) -> list[float]:
        out: list[float] = []
        for arr in self.arrivals:
            ts = [t for t in arr if t0 <= t <= t1]
            out.extend(b - a for a, b in itertools.pairwise(ts))
        return out

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for s in self.slots:
            s.close()


def _window(eng: Any, live: _Live, seconds: float, during: Any = None) -> dict[str, Any]:
    """The live calls' ticks and output gaps over ``seconds``; ``during(deadline)``, when
    given, runs meanwhile (it returns once the deadline is past and its work is done)."""
    stats = eng._tick_stats
    with eng._lock:
        n0 = stats.ticks
        late0 = eng._late_ticks
    t0 = time.monotonic()
    if during is not None:
        during(t0 + seconds)
    while time.monotonic() - t0 < seconds:
        time.sleep(0.05)
    t1 = time.monotonic()
    with eng._lock:
        new = stats.ticks - n0
        ticks = list(stats.recent)[-new:] if new else []
        late = eng._late_ticks - late0
    return {"seconds": round(t1 - t0, 2), "ticks": new, "late_ticks": late,
            "tick_p99_ms": _p99_ms(ticks), "output_gap_p99_ms": _p99_ms(live.gaps(t0, t1))}


def persona_bench(models: Any, persona: str, voice: str | None, slots: int,
                  seconds: float) -> dict[str, Any]:
    from ..engine.core import Engine, EngineConfig
    from ..engine.persona import make_prompt

    prompt = make_prompt(persona, voice)
    if prompt is None:
        raise ValueError("--persona needs a text (and optionally --voice)")
    eng = Engine(models, EngineConfig(slots=max(2, slots)))
    eng.warm_up()
    run = eng._prompt_run(prompt)
    cold_s = eng.warm(prompt)
    pm = eng.metrics().persona
    steps = pm.prefill_steps
    t0 = time.perf_counter()
    slot = eng.try_open("cached", lambda _e: None, persona=prompt)
    eng.tick()
    cached_s = time.perf_counter() - t0
    cached = bool(slot.prompt_run is not None and slot.prompt_run.cached)
    slot.close()
    eng.start()
    live = _Live(eng, eng.slots - 1)
    try:
        _window(eng, live, 1.0)  # settle
        base = _window(eng, live, seconds)
        # The same newcomer with its prompt cached: a row more in the batch (it is packed
        # like any call), no prefill. Against this, the cold window shows the prefill's cost.
        c = eng.try_open("cached-newcomer", lambda _e: None, persona=prompt)
        with_cached = _window(eng, live, seconds)
        c.close()
        _window(eng, live, 0.5)  # the row leaves
        walls: list[float] = []

        def prefills(deadline: float) -> None:
            # One cold prefill after another, so every tick of the window has one beside it.
            k = 0
            while not walls or time.monotonic() < deadline:
                k += 1
                fresh = make_prompt(f"{persona} (new call {k})", voice)
                p = eng.try_open(f"prefill-{k}", lambda _e: None, persona=fresh)
                run = p.prompt_run
                if run is not None:
                    run.done.wait(600)
                    if run.ready_at is not None:
                        walls.append(run.ready_at - run.opened_at)
                p.close()

        during = _window(eng, live, seconds, prefills)
        during["prefills"] = len(walls)
        prefill_wall = round(float(np.median(walls)), 3) if walls else None
    finally:
        live.close()
        eng.stop()

    def ratio(a: dict[str, Any], b: dict[str, Any], key: str = "tick_p99_ms") -> float | None:
        return round(a[key] / b[key], 3) if a[key] and b[key] else None
    return {
        "persona": persona, "voice": run.key.voice if run else voice,
        "cold": {"wall_s": round(cold_s, 3), "steps": steps,
                 "ms_per_step": round(1000 * pm.prefill_seconds / max(steps, 1), 2)},
        "cached": {"start_ms": round(1000 * cached_s, 2), "restored": cached,
                   "state_bytes": pm.bytes},
        "co_batched": {"live_calls": eng.slots - 1, "without_newcomer": base,
                       "with_cached_newcomer": with_cached, "during_cold_prefill": during,
                       # The prefill's own effect: cold newcomer against cached newcomer.
                       "tick_p99_ratio": ratio(during, with_cached),
                       "output_gap_p99_ratio": ratio(during, with_cached,
                                                     "output_gap_p99_ms"),
                       "tick_p99_ratio_vs_no_newcomer": ratio(during, base),
                       "prefill_wall_s_beside_live_calls": prefill_wall},
    }

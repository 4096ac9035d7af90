"""A late tick is made up by ticking back to back, not by shifting the schedule (ADR 0160):
the clock by hand, then a real engine whose tick thread stalls under a real-time caller."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest

from voice_server_moshi.engine.tick_clock import TickClock

P = 0.08


def test_an_on_time_loop_waits_for_each_period() -> None:
    c = TickClock(P, 4, now=10.0)
    assert c.wait_s(10.0) == 0.0
    assert c.ticked(10.02) is False  # a 20 ms tick
    assert c.wait_s(10.02) == pytest.approx(0.06)
    assert c.next_t == pytest.approx(10.08)


def test_a_late_tick_is_made_up_back_to_back_on_the_old_phase() -> None:
    c = TickClock(P, 4, now=0.0)
    assert c.ticked(0.20) is True  # due at 0, ended at 200 ms: 120 ms behind the next
    due = []
    now = 0.20
    while c.wait_s(now) <= 0:  # catch-up ticks of 30 ms each, no waiting between
        due.append(round(c.next_t, 3))
        now += 0.03
        c.ticked(now)
    # The ticks due at 80, 160 and 240 ms ran at once (ending at 230, 260 and 290 ms), and
    # the next one waits for 320 ms: the old phase, so every caller's queue is back to its
    # depth before the stall.
    assert due == [0.08, 0.16, 0.24]
    assert c.next_t == pytest.approx(0.32) and c.wait_s(now) == pytest.approx(0.03)


def test_only_ticks_ending_over_a_period_behind_count_as_late() -> None:
    c = TickClock(P, 4, now=0.0)
    assert c.ticked(0.15) is False  # 70 ms behind the next tick: made up, not late
    assert c.ticked(0.17) is False
    c = TickClock(P, 4, now=0.0)
    assert [c.ticked(t) for t in (0.25, 0.26, 0.27, 0.28)] == [True, True, False, False]


def test_further_behind_than_the_queues_hold_it_catches_up_only_that_much() -> None:
    c = TickClock(P, 4, now=0.0)
    assert c.ticked(2.0) is True  # a 2 s stall: the queues dropped all but 4 frames
    assert c.next_t == pytest.approx(2.0 - 3 * P)
    ran = 0
    now = 2.0
    while c.wait_s(now) <= 0:
        ran += 1
        c.ticked(now)  # instant ticks
    assert ran == 4  # one per frame a full queue holds


def test_restart_starts_a_fresh_phase_and_bad_arguments_are_refused() -> None:
    c = TickClock(P, 4, now=0.0)
    c.restart(5.013)
    assert c.wait_s(5.013) == 0.0
    with pytest.raises(ValueError, match="period_s"):
        TickClock(0.0, 4, now=0.0)
    with pytest.raises(ValueError, match="catch_up_ticks"):
        TickClock(P, 0, now=0.0)


@pytest.mark.slow
def test_after_a_tick_stall_a_real_time_callers_backlog_is_back_to_its_depth(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The tick thread stalls 200 ms (2.5 periods) under a caller sending a frame every
    80 ms, half a period after the engine's phase. Before ADR 0160 the loop restarted its
    schedule after the stall: two frames more waited before every tick for the rest of the
    call (the trim leaves that standing, ADR 0065), 160 ms of lag. Now it catches up, and
    nothing is dropped or trimmed."""
    pytest.importorskip("moshi")
    from voice_server_moshi.engine.checkpoints import make_dev_checkpoint
    from voice_server_moshi.engine.core import Engine, EngineConfig
    from voice_server_moshi.engine.models import load_models

    make_dev_checkpoint(tmp_path / "dev")
    models = load_models(str(tmp_path / "dev"), device="cpu", dtype="float32")
    eng = Engine(models, EngineConfig(slots=1, fill_after_ticks=None))
    eng.start()
    frame = np.zeros(1920, dtype=np.float32)
    try:
        slot = eng.try_open("steady", lambda ev: None)
        t0 = time.monotonic() + P / 2  # the loop's phase starts at the open
        depths: list[tuple[float, int]] = []
        stall_at, stall_s = 2.0, 0.2

        def stall() -> None:
            time.sleep(max(0.0, t0 + stall_at - time.monotonic()))
            with eng._tick_lock:
                time.sleep(stall_s)

        staller = threading.Thread(target=stall)
        staller.start()
        for k in range(60):  # 4.8 s
            time.sleep(max(0.0, t0 + k * P - time.monotonic()))
            slot.push(frame)
            depths.append((k * P, slot.queued))  # frames waiting, this one included
        staller.join()
        late = eng.metrics().late_ticks
    finally:
        eng.stop()
        eng.detach()
    before = [d for t, d in depths if 0.8 <= t < stall_at]
    after = [d for t, d in depths if t >= stall_at + stall_s + 0.8]
    print(f"frames waiting after each push: before the stall {before}, after it {after}; "
          f"late ticks {late}, trimmed {slot.trimmed}, overruns {slot.overruns}")
    assert late >= 1  # the stall did make the loop late
    assert statistics.median(after) <= statistics.median(before)
    assert slot.trimmed == 0 and slot.overruns == 0

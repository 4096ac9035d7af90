"""The tick loop's schedule (ADR 0160): a tick late by less than a period is made up at
once; one more than a period behind restarts the schedule, is counted and logged once. The
clock by hand, then a real engine whose tick thread stalls under a real-time caller."""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np
import pytest

from voice_server_moshi.engine.tick_clock import TickClock

P = 0.08


def test_an_on_time_loop_waits_for_each_period() -> None:
    c = TickClock(P, now=10.0)
    assert c.wait_s(10.0) == 0.0
    assert c.ticked(10.02) is False  # a 20 ms tick
    assert c.wait_s(10.02) == pytest.approx(0.06)
    assert c.behind_s == pytest.approx(-0.06)


def test_a_tick_late_by_less_than_a_period_is_made_up_on_the_same_phase() -> None:
    c = TickClock(P, now=0.0)
    assert c.ticked(0.15) is False  # due at 0, ended at 150 ms: 70 ms behind the next
    assert c.wait_s(0.15) < 0  # so the next runs at once...
    assert c.ticked(0.19) is False
    assert c.next_t == pytest.approx(0.16)  # ...and the one after keeps the old phase
    assert c.wait_s(0.19) < 0 and c.ticked(0.20) is False
    assert c.wait_s(0.20) == pytest.approx(0.04)


def test_more_than_a_period_behind_restarts_the_schedule_from_now() -> None:
    c = TickClock(P, now=0.0)
    assert c.ticked(0.25) is True  # due at 0, ended 170 ms behind the next: late
    assert c.behind_s == pytest.approx(0.17)
    assert c.next_t == pytest.approx(0.25)  # no burst of three ticks back to back
    assert c.ticked(0.29) is False
    assert c.wait_s(0.29) == pytest.approx(0.04)  # the new phase: 250 + 80 ms


def test_restart_starts_a_fresh_phase_and_a_bad_period_is_refused() -> None:
    c = TickClock(P, now=0.0)
    c.ticked(0.5)
    c.restart(5.013)
    assert c.wait_s(5.013) == 0.0 and c.behind_s == 0.0
    with pytest.raises(ValueError, match="period_s"):
        TickClock(0.0, now=0.0)


@pytest.mark.slow
def test_a_tick_stall_is_one_late_tick_logged_once_and_its_frames_wait(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The tick thread stalls 230 ms under a caller sending a frame every 80 ms: one late
    tick, one warning naming how far behind, one line when the loop is back, and the
    caller's frames wait in its queue (no overrun)."""
    pytest.importorskip("moshi")
    from voice_server_moshi.engine.checkpoints import make_dev_checkpoint
    from voice_server_moshi.engine.core import Engine, EngineConfig
    from voice_server_moshi.engine.models import load_models

    make_dev_checkpoint(tmp_path / "dev")
    models = load_models(str(tmp_path / "dev"), device="cpu", dtype="float32")
    frame = np.zeros(1920, dtype=np.float32)
    caplog.set_level(logging.INFO, logger="voice_server_moshi.engine")
    eng = Engine(models, EngineConfig(slots=1, fill_after_ticks=None))
    eng.start()
    try:
        slot = eng.try_open("steady", lambda ev: None)
        t0 = time.monotonic() + P / 2  # half a period after the loop's phase

        def stall() -> None:
            time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
            with eng._tick_lock:
                time.sleep(0.23)

        staller = threading.Thread(target=stall)
        staller.start()
        for k in range(35):  # 2.8 s
            time.sleep(max(0.0, t0 + k * P - time.monotonic()))
            slot.push(frame)
        staller.join()
        late = eng.metrics().late_ticks
    finally:
        eng.stop()
        eng.detach()
    behind = [r for r in caplog.records if "tick loop behind schedule" in r.getMessage()]
    back = [r for r in caplog.records if "tick loop back on schedule" in r.getMessage()]
    print(f"late ticks {late}; {[r.getMessage() for r in behind + back]}; "
          f"overruns {slot.overruns}, trimmed {slot.trimmed}")
    assert late == 1
    assert len(behind) == 1 and behind[0].levelno == logging.WARNING
    line = behind[0].getMessage()
    assert "live_calls=1" in line and "late_ticks=1" in line
    how_far = re.search(r"behind_ms=([0-9.]+)", line)
    assert how_far is not None and float(how_far.group(1)) > 80
    assert len(back) == 1 and "late_ticks=1" in back[0].getMessage()
    assert slot.overruns == 0  # the stall's frames waited (the trim may drop one later)

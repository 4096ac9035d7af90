"""Playout buffer: start threshold, underruns, bound, flush, and the arrival replay."""

from __future__ import annotations

import pytest

from voice_server_moshi.modes.playout import PlayoutBuffer, simulate


def test_holds_new_audio_prebuffer_ticks_then_plays_in_order() -> None:
    buf = PlayoutBuffer(2, 10, b"s")
    assert buf.pop() == (b"s", False)  # nothing queued: no hold counted
    buf.push(b"1")
    assert buf.pop() == (b"s", False)
    buf.push(b"2")
    assert buf.pop() == (b"s", False)
    assert buf.pop() == (b"1", True)
    assert buf.pop() == (b"2", True)
    assert buf.pop() == (b"s", False)
    assert buf.stats.underruns == 1


def test_bounded_and_flushable() -> None:
    buf = PlayoutBuffer(0, 3, b"s")
    for i in range(5):
        buf.push(bytes([i]))
    assert len(buf) == 3 and buf.stats.dropped_overflow == 2
    assert buf.pop() == (bytes([2]), True)
    assert buf.flush() == 2 and len(buf) == 0


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        PlayoutBuffer(5, 5, b"")


def test_simulate_jittery_bursts() -> None:
    # 80 ms bursts of four 20 ms frames, every other one 30 ms late, and a 50 ms stall
    # (the engine fell behind) every 20 bursts.
    arrivals = []
    stall = 0.0
    for n in range(100):
        if n % 20 == 19:
            stall += 50.0
        t = 100.0 + 80.0 * n + (30.0 if n % 2 else 0.0) + stall
        arrivals += [t] * 4
    tight = simulate(arrivals, 20.0, 0)
    roomy = simulate(arrivals, 20.0, 300)
    # Each underrun makes the buffer a frame later: only stalls beyond that slack repeat it.
    assert tight.underruns >= 3
    assert roomy.underruns == 0
    assert roomy.mean_depth_frames > tight.mean_depth_frames

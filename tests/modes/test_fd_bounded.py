"""Per-call records of the full-duplex mode stay bounded however long the call runs.

The bounds are shrunk so that one corpus call (35 s, several agent turns and overlaps) is
a "long" call for them; a one-hour call at the real bounds is the same situation.
"""

from __future__ import annotations

import pytest

from voice_server_moshi.corpus.assemble import build_call
from voice_server_moshi.corpus.store import bundled_clips
from voice_server_moshi.modes import agent_activity, full_duplex, overlap
from voice_server_moshi.modes.playout import PlayoutBuffer

from .test_fd_mode import caller_bytes, make_mode, play


async def test_a_long_call_keeps_its_records_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(full_duplex, "RECENT_FRAMES", 100)
    monkeypatch.setattr(overlap, "MAX_OVERLAPS", 1)
    monkeypatch.setattr(agent_activity, "MAX_INTERVALS", 2)
    call = build_call(bundled_clips(), 1, 20.0)
    mode, rec, _, _ = make_mode(call)
    await play(mode, caller_bytes(call))
    await mode.stop()
    assert isinstance(mode, full_duplex.FullDuplexMode)
    ticks = mode.t_ms / mode.frame_ms
    assert ticks > 1500
    assert len(mode.response_wall_ms) == 100 and len(mode.arrival_ms) == 100
    assert len(mode._sent_walls) <= 100
    assert len(mode.agent.intervals) == 2
    assert len(rec.of("agent-turn-started")) > 2  # more turns than were kept
    assert len(mode.callers.overlaps) == 1
    verdicts = mode.callers.verdicts
    assert sum(verdicts.values()) > 1  # more overlaps than were kept, all counted
    assert mode.stats()["backchannels"] == verdicts["backchannel"] >= 1
    # The playout summary is a handful of numbers, not a per-tick history.
    stats = mode.playout.stats
    assert stats.depth_ticks == int(ticks) and stats.max_depth_frames >= 1


def test_playout_depth_summary_is_exact() -> None:
    buf = PlayoutBuffer(0, 10, b"s")
    depths = []
    for k in range(100_000):
        if k % 3:
            buf.push(b"a")
        depths.append(len(buf))
        buf.pop()
    s = buf.stats
    assert s.depth_ticks == len(depths)
    assert s.mean_depth_frames == pytest.approx(sum(depths) / len(depths))
    assert s.max_depth_frames == max(depths)
    assert not any(isinstance(v, list) for v in (getattr(s, f) for f in s.__slots__))

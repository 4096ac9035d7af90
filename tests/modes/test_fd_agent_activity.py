"""Agent turns from played audio levels and Moshi's text."""

from __future__ import annotations

import numpy as np

from voice_server_moshi.modes.agent_activity import AgentActivity
from voice_server_moshi.modes.levels import SILENCE_DBFS, pcm_level_dbfs
from voice_server_moshi.modes.settings import FullDuplexSettings

FRAME = 20.0


def feed(act: AgentActivity, levels: list[float], t0: float = 0.0) -> list[tuple[str, float]]:
    out = []
    for i, lv in enumerate(levels):
        out += [(tr.kind, tr.t_ms) for tr in act.process(lv, t0 + i * FRAME)]
    return out


def test_turn_starts_at_onset_and_ends_after_hangover() -> None:
    s = FullDuplexSettings(agent_hangover_no_text_ms=200)
    act = AgentActivity(s, FRAME)
    levels = [-70.0] * 50 + [-20.0] * 50 + [-70.0] * 30
    trs = feed(act, levels)
    assert trs[0] == ("start", 1000.0)
    kind, t_end = trs[1]
    assert kind == "end" and t_end == 2000.0  # end of the last loud frame
    assert act.intervals[0].end_ms == 2000.0


def test_gap_shorter_than_hangover_keeps_the_turn() -> None:
    act = AgentActivity(FullDuplexSettings(agent_hangover_no_text_ms=200), FRAME)
    levels = [-70.0] * 20 + [-20.0] * 20 + [-70.0] * 8 + [-20.0] * 20 + [-70.0] * 20
    trs = feed(act, levels)
    assert [k for k, _ in trs] == ["start", "end"]


def test_text_still_flowing_lengthens_the_hangover() -> None:
    s = FullDuplexSettings(agent_hangover_ms=400, agent_hangover_no_text_ms=200,
                           agent_text_silence_ms=240)
    act = AgentActivity(s, FRAME)
    trs = feed(act, [-70.0] * 20 + [-20.0] * 20)  # speaking until 800 ms
    assert trs == [("start", 400.0)]
    ends = []
    for i in range(30):
        t = 800.0 + i * FRAME
        act.note_text(" word", t)  # Moshi keeps emitting text during a quiet stretch
        ends += [tr.t_ms for tr in act.process(-70.0, t) if tr.kind == "end"]
        if ends:
            break
    # Ended only once 400 ms of quiet passed, not after the 200 ms no-text hangover.
    assert ends == [800.0] and t >= 800.0 + 400.0 - FRAME


def test_blank_text_is_padding_not_speech() -> None:
    act = AgentActivity(FullDuplexSettings(), FRAME)
    act.note_text("   ", 100.0)
    assert not act.text_recent(110.0)
    act.note_text(" hi", 100.0)
    assert act.text_recent(110.0)


def test_steady_hum_becomes_the_floor() -> None:
    act = AgentActivity(FullDuplexSettings(), FRAME)
    trs = feed(act, [SILENCE_DBFS] * 10 + [-30.0] * 400)  # 8 s of a constant -30 dBFS hum
    # It starts a turn (a new loud sound), but the floor catches up within its window.
    assert trs[0][0] == "start" and trs[-1][0] == "end"
    assert trs[-1][1] < 5000.0


def test_dc_offset_is_not_sound() -> None:
    dc = np.full(160, 0.08, dtype=np.float32)
    assert pcm_level_dbfs(dc) == SILENCE_DBFS
    tone = (0.1 * np.sin(np.arange(160) * 2 * np.pi * 1000 / 8000)).astype(np.float32)
    assert -24.0 < pcm_level_dbfs(tone + 0.08) < -22.0

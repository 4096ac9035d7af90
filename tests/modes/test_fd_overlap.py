"""Backchannel vs barge-in classification on call time."""

from __future__ import annotations

from voice_server_moshi.modes.agent_activity import AgentActivity
from voice_server_moshi.modes.overlap import CallerTurns, TurnAction
from voice_server_moshi.modes.settings import FullDuplexSettings

FRAME = 20.0


def agent_speaking(settings: FullDuplexSettings, start: float, end: float | None,
                   until: float) -> AgentActivity:
    """An AgentActivity fed with speech-like frames over [start, end) (loud, with a quiet
    frame every 200 ms between words) and quiet ones elsewhere."""
    act = AgentActivity(settings, FRAME)
    t = 0.0
    k = 0
    while t < until:
        loud = start <= t and (end is None or t < end) and k % 10 != 9
        act.process(-20.0 if loud else -70.0, t)
        t += FRAME
        k += 1
    return act


def run(turns: CallerTurns, start: float, end: float | None, until: float) -> list[TurnAction]:
    out = turns.speech_started(start, start)
    t = start
    while t <= until:
        if end is not None and t >= end + turns.s.vad_hangover_ms:
            out += turns.speech_ended(end, t)
            end = None
        out += turns.tick(t)
        t += FRAME
    return out


def test_speech_while_agent_silent_is_a_turn_at_once() -> None:
    s = FullDuplexSettings()
    turns = CallerTurns(s, agent_speaking(s, 5000, 6000, 3000))
    acts = turns.speech_started(1000.0, 1030.0)
    assert acts == [TurnAction("started", 1000.0, False, 1030.0)]
    assert turns.speech_ended(2000.0, 2300.0)[0].kind == "ended"


def test_short_speech_over_agent_is_a_backchannel() -> None:
    s = FullDuplexSettings()
    turns = CallerTurns(s, agent_speaking(s, 200, None, 4000))
    acts = run(turns, 2000.0, 2400.0, 3500.0)
    assert acts == []
    assert [o.verdict for o in turns.overlaps] == ["backchannel"]


def test_long_speech_over_agent_is_a_barge_in_decided_after_max_backchannel() -> None:
    s = FullDuplexSettings(max_backchannel_ms=800, vad_hangover_ms=300)
    turns = CallerTurns(s, agent_speaking(s, 200, None, 6000))
    acts = run(turns, 2000.0, 4000.0, 5000.0)
    assert acts[0].kind == "started" and acts[0].barge_in and acts[0].t_ms == 2000.0
    assert acts[0].decided_ms == 2000.0 + 800 + 300
    assert acts[1].kind == "ended" and acts[1].t_ms == 4000.0


def test_agent_stopping_right_after_onset_is_turn_taking() -> None:
    s = FullDuplexSettings(min_overlap_ms=200, agent_hangover_no_text_ms=200)
    turns = CallerTurns(s, agent_speaking(s, 200, 2100, 3000))  # agent stops 100 ms in
    acts = run(turns, 2000.0, 2300.0, 2900.0)
    assert acts[0].kind == "started" and not acts[0].barge_in
    assert turns.overlaps[0].verdict == "turn"


def test_detection_off_makes_every_utterance_a_turn() -> None:
    s = FullDuplexSettings(backchannel_detection=False)
    turns = CallerTurns(s, agent_speaking(s, 200, None, 4000))
    acts = run(turns, 2000.0, 2300.0, 3000.0)
    assert [a.kind for a in acts] == ["started", "ended"] and not acts[0].barge_in


def test_loud_rule_decides_early() -> None:
    s = FullDuplexSettings(loud_barge_in_db=10.0, min_overlap_ms=200)
    turns = CallerTurns(s, agent_speaking(s, 200, None, 4000))
    turns.speech_started(2000.0, 2000.0)
    for k in range(20):
        turns.caller_level(-5.0, 2000.0 + k * FRAME)  # 15 dB over the agent's -20
    assert turns.tick(2100.0) == []  # before min_overlap_ms
    acts = turns.tick(2400.0)
    assert acts and acts[0].barge_in and acts[0].decided_ms == 2400.0


def test_backchannel_in_an_agent_pause_is_still_a_backchannel() -> None:
    """The agent pauses between phrases (its turn even ends on the hangover) right as the
    caller says "uh-huh", then goes on: a backchannel, not a turn."""
    s = FullDuplexSettings(agent_hangover_no_text_ms=200)
    act = AgentActivity(s, FRAME)
    t = 0.0
    while t < 5000.0:
        loud = (200 <= t < 2050 or 2450 <= t < 5000) and int(t // FRAME) % 10 != 9
        act.process(-20.0 if loud else -70.0, t)
        t += FRAME
    assert len(act.intervals) == 2  # the pause did end the first agent turn
    turns = CallerTurns(s, act)
    acts = run(turns, 2000.0, 2400.0, 3000.0)
    assert acts == [] and turns.overlaps[0].verdict == "backchannel"


def test_short_answer_as_the_agent_finishes_is_a_turn() -> None:
    s = FullDuplexSettings()
    turns = CallerTurns(s, agent_speaking(s, 200, 2050, 4000))
    acts = run(turns, 2000.0, 2350.0, 3000.0)  # "yes" over the agent's last 50 ms
    assert [a.kind for a in acts] == ["started", "ended"] and not acts[0].barge_in

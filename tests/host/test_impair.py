"""The dialable bad line (host/impair.py) and what it does to a call through the mode."""

from __future__ import annotations

import pytest

from voice_server_moshi.corpus.assemble import build_call
from voice_server_moshi.corpus.evaluate import score_call
from voice_server_moshi.corpus.run import run_corpus_call
from voice_server_moshi.corpus.store import bundled_clips
from voice_server_moshi.host.impair import Delivery, Impairment


def test_parse_and_describe() -> None:
    imp = Impairment.parse("jitter_ms=40,loss=0.02, seed=1")
    assert (imp.jitter_ms, imp.loss, imp.seed) == (40.0, 0.02, 1)
    assert Impairment.parse(imp.describe()) == imp
    assert Impairment.parse("") == Impairment() and not Impairment().active


@pytest.mark.parametrize("spec, match", [
    ("jitter=40", "NAME one of"), ("loss", "NAME=VALUE"), ("loss=lots", "not a number"),
    ("loss=1.5", r"\[0, 1\)"), ("jitter_ms=-1", ">= 0"),
    ("stall_ms=100,stall_every_ms=50", "stall_every_ms"),
])
def test_bad_specs_are_refused_clearly(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Impairment.parse(spec)


def test_clean_line_delivers_every_frame_on_time() -> None:
    assert Impairment().schedule(5, 20.0) == [Delivery(k * 20.0, k) for k in range(5)]


def test_schedule_is_seeded_and_matches_its_parameters() -> None:
    imp = Impairment(jitter_ms=40.0, loss=0.05, burst=0.5, duplicate=0.02, seed=3)
    a, b = imp.schedule(20000, 20.0), imp.schedule(20000, 20.0)
    assert a == b  # the same bad line every run
    frames = {d.frame for d in a}
    assert 0.04 < 1 - len(frames) / 20000 < 0.06  # the long-run loss rate
    assert 0.01 < (len(a) - len(frames)) / 20000 < 0.03  # duplicates
    delays = [d.arrival_ms - d.frame * 20.0 for d in a]
    assert min(delays) >= 0 and max(delays) <= 40.0 + 20.0  # jitter (+ a duplicate's frame)
    # losses come in bursts: P(lost | previous lost) is `burst`
    lost = [k for k in range(20000) if k not in frames]
    runs = sum(1 for k in lost if k - 1 not in frames) / max(1, len(lost))
    assert 0.4 < runs < 0.6
    assert [d.arrival_ms for d in a] == sorted(d.arrival_ms for d in a)


def test_stall_delivers_held_frames_at_once() -> None:
    out = Impairment(stall_ms=200.0, stall_at_ms=100.0).schedule(20, 20.0)
    assert {d.arrival_ms for d in out if 5 <= d.frame < 15} == {300.0}
    assert [d.frame for d in out] == list(range(20))


def test_reordering_swaps_neighbours() -> None:
    out = Impairment(reorder=0.3, seed=2).schedule(200, 20.0)
    order = [d.frame for d in out]
    assert sorted(order) == list(range(200)) and order != list(range(200))


@pytest.mark.slow
async def test_a_bad_line_costs_no_onset_and_splits_no_barge_in() -> None:
    """Through the reference host, the real adapter and the mode's jitter buffer: at 40 ms
    jitter and 2 % loss (the issue's line), the same turns as on a clean line."""
    call = build_call(bundled_clips(), 1, 20.0)
    clean = score_call(call, (await run_corpus_call(call)).records)
    bad_line = Impairment.parse("jitter_ms=40,loss=0.02,seed=1")
    result = await run_corpus_call(call, impair=bad_line)
    bad = score_call(call, result.records)
    assert bad.onsets_missed == clean.onsets_missed == 0
    assert bad.barge_ins_raised == clean.barge_ins_raised == bad.barge_ins
    assert bad.split_turns == 0 and bad.false_turns == clean.false_turns
    media = result.mode_stats["caller_media"]
    assert media["lost_frames"] > 0 and media["concealed_frames"] >= media["lost_frames"]
    assert media["mean_delay_ms"] <= 80.0  # the delay the buffer adds stays bounded

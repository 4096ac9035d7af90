"""The corpus, and the issue's turn-detection goals measured on it (virtual clock)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from voice_server_moshi.audio.wavio import read_wav
from voice_server_moshi.bench.turns import score_corpus
from voice_server_moshi.cli import main as cli_main
from voice_server_moshi.corpus import clips as clips_mod
from voice_server_moshi.corpus.assemble import build_call, standard_set
from voice_server_moshi.corpus.evaluate import summarize
from voice_server_moshi.corpus.store import bundled_clips


def test_bundled_clips_are_small_trimmed_telephone_audio() -> None:
    clips = bundled_clips()
    assert {c.spec.kind for c in clips.values()} == {"utterance", "backchannel", "barge-in",
                                                      "agent"}
    for c in clips.values():
        # Trimmed: speech within the first and last 30 ms.
        head = np.abs(c.pcm[:240]).max()
        tail = np.abs(c.pcm[-240:]).max()
        assert head > 0.005 and tail > 0.002, c.spec.name
        if c.spec.kind == "backchannel":
            assert c.duration_ms < 800


def test_calls_are_deterministic_and_labels_consistent() -> None:
    a = build_call(bundled_clips(), 5, 20.0)
    b = build_call(bundled_clips(), 5, 20.0)
    assert np.array_equal(a.caller, b.caller) and a.labels() == b.labels()
    segs = a.caller_segments
    assert all(s.start_ms < s.end_ms <= a.duration_ms for s in segs)
    assert all(x.end_ms < y.start_ms for x, y in itertools.pairwise(segs))
    for s in segs:
        if s.kind in ("backchannel", "barge-in"):
            assert any(g.start_ms < s.start_ms < g.end_ms for g in a.agent_segments)


@pytest.mark.parametrize("snr", [20.0, 5.0])
def test_noise_is_at_the_requested_snr(snr: float) -> None:
    clean = build_call(bundled_clips(), 2, 200.0)  # practically no noise
    noisy = build_call(bundled_clips(), 2, snr)
    speech = np.concatenate([clean.caller[int(s.start_ms * 8) : int(s.end_ms * 8)]
                             for s in clean.caller_segments])
    noise = noisy.caller - clean.caller
    measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) /
                             np.mean(noise.astype(np.float64) ** 2))
    assert abs(measured - snr) < 0.5
    # Band-limited: little energy below 300 Hz or above 3400 Hz.
    spec = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(len(noise), 1 / 8000)
    assert spec[(f < 250) | (f > 3500)].sum() < 0.01 * spec.sum()


def test_goals_at_20_db_snr() -> None:
    """The issue's goals, measured on 12 corpus calls (~7 min of audio) through the real
    MoshiAdapter and the mode, with the scripted agent, on a virtual clock."""
    import asyncio

    calls = standard_set(bundled_clips(), calls=12, snrs=(20.0,))
    s = summarize(asyncio.run(score_corpus(calls)))
    assert s["backchannels"] >= 30 and s["barge_ins"] >= 15 and s["onsets"] >= 60
    assert s["onset_abs_error_ms"]["p90"] <= 150.0
    assert s["backchannels_not_raised_ratio"] >= 0.90
    assert s["barge_ins_raised_ratio"] >= 0.95
    assert s["disconnected_exactly_once"] and s["callbacks_after_disconnected"] == 0


def test_make_corpus_with_bundled_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["make-corpus", str(tmp_path), "--calls", "2", "--snr", "15",
                   "--bundled-clips"])
    assert rc == 0
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert [x["call_id"] for x in labels] == ["call-001-snr15", "call-002-snr15"]
    wav = read_wav(tmp_path / "calls" / "call-001-snr15" / "caller.wav")
    assert wav.encoding == "mulaw" and wav.sample_rate == 8000
    assert abs(wav.duration_s * 1000 - labels[0]["duration_ms"]) < 1
    assert cli_main(["make-corpus", str(tmp_path), "--snr", "x"]) == 2


def test_missing_tools_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli_main(["make-corpus", str(tmp_path / "c")]) == 2
    assert "apt-get install espeak-ng sox" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="espeak-ng and sox not installed (apt-get install espeak-ng sox)")
def test_synthesis_reproduces_the_committed_clips(tmp_path: Path) -> None:
    spec = next(s for s in clips_mod.CLIPS if s.name == "b2")
    clips_mod.synthesize(spec, tmp_path / "b2.wav")
    made = read_wav(tmp_path / "b2.wav")
    assert made.encoding == "mulaw" and made.sample_rate == 8000
    assert np.array_equal(made.mono(), bundled_clips()["b2"].pcm)


def test_standard_set_matches_the_committed_labels() -> None:
    """The assembled corpus is a pure function of the clips and the seeds: guard it, so a
    change in assembly (or in numpy's generator) cannot silently move the ground truth."""
    from voice_server_moshi.bundled import bundled_clip_dir

    committed = json.loads((bundled_clip_dir().parent / "labels-standard-20db.json").read_text())
    made = [c.labels() for c in standard_set(bundled_clips(), calls=12, snrs=(20.0,))]
    assert made == committed

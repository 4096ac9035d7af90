"""The noisy corpus: backgrounds, SNR over speech, noise-only and echo-only calls, make-corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voice_server_moshi.cli import main as cli_main
from voice_server_moshi.corpus.assemble import build_call
from voice_server_moshi.corpus.noise import NOISE_KINDS, background, fast_len
from voice_server_moshi.corpus.noisy import echo_only_call, noise_only_call
from voice_server_moshi.corpus.store import bundled_clips


def _band_share(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / 8000)
    return float(spec[(f >= 200) & (f <= 3500)].sum() / spec.sum())  # 100 Hz edges


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_backgrounds_are_unit_power_telephone_band_and_deterministic(kind: str) -> None:
    a = background(kind, 40000, np.random.default_rng(1))
    assert np.array_equal(a, background(kind, 40000, np.random.default_rng(1)))
    assert abs(float(np.mean(a.astype(np.float64) ** 2)) - 1.0) < 1e-3
    assert _band_share(a) > 0.99


def test_unknown_background_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown background"):
        background("rain", 100, np.random.default_rng(1))
    with pytest.raises(ValueError, match="unknown background"):
        build_call(bundled_clips(), 1, 10.0, background="rain")


def test_fast_len() -> None:
    assert fast_len(277404) == 279936 and fast_len(1024) == 1024 and fast_len(1) == 1


def test_noisy_call_keeps_the_script_and_sets_snr_over_speech() -> None:
    clean = build_call(bundled_clips(), 2, 200.0)
    noisy = build_call(bundled_clips(), 2, 5.0, background="babble")
    assert noisy.caller_segments == clean.caller_segments
    assert noisy.labels()["background"] == "babble"
    assert {s.kind for s in noisy.caller_segments} <= {"utterance", "backchannel", "barge-in"}
    noise = noisy.caller.astype(np.float64) - clean.caller
    speech = np.concatenate([clean.caller[int(s.start_ms * 8) : int(s.end_ms * 8)]
                             for s in clean.caller_segments]).astype(np.float64)
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
    assert abs(snr - 5.0) < 0.3


def test_noise_only_and_echo_only_calls() -> None:
    n = noise_only_call("street", 10.0, seconds=5.0)
    assert n.caller_segments == [] and n.agent_segments == [] and n.duration_ms == 5000
    level = 10 * np.log10(np.mean(n.caller.astype(np.float64) ** 2))
    assert abs(level - (-19.0 - 10.0)) < 0.5
    e = echo_only_call(bundled_clips(), 3, speakerphone=False)
    assert e.caller_segments == [] and len(e.agent_segments) == 4
    assert e.echo is not None and -25 <= e.echo["gain_db"] <= -15
    assert 20 <= e.echo["delay_ms"] <= 200
    # The echo is the agent, delayed by the stated delay plus the adapter's 80 ms frame.
    lag = int((e.echo["delay_ms"] + 80) * 8)
    c = np.corrcoef(e.caller[lag:].astype(np.float64), e.agent[: len(e.agent) - lag])[0, 1]
    assert c > 0.9
    ratio = 10 * np.log10(np.mean(e.caller.astype(np.float64) ** 2)
                          / np.mean(e.agent.astype(np.float64) ** 2))
    assert abs(ratio - e.echo["gain_db"]) < 1.5


def test_make_corpus_noisy_writes_labelled_calls(tmp_path: Path) -> None:
    rc = cli_main(["make-corpus", str(tmp_path), "--bundled-clips", "--noisy", "--calls", "1",
                   "--snr", "10", "--kinds", "babble,music", "--echo-calls", "1"])
    assert rc == 0
    labels = json.loads((tmp_path / "labels.json").read_text())
    ids = [d["call_id"] for d in labels]
    assert ids == ["call-001-babble-snr10", "call-001-music-snr10", "noise-001-babble-snr10",
                   "noise-001-music-snr10", "echo-001-line"]
    assert all((tmp_path / "calls" / i / "caller.wav").exists() for i in ids)
    assert (tmp_path / "babble" / "t1.wav").exists()
    assert cli_main(["make-corpus", str(tmp_path), "--bundled-clips", "--noisy",
                     "--kinds", "rain"]) == 2


@pytest.mark.slow
async def test_default_vad_end_to_end_in_babble_and_on_echo() -> None:
    """Through the adapter and the full-duplex mode (what `bench turns --noisy` measures):
    the cascade catches every sentence over babble and raises nothing from echo alone."""
    pytest.importorskip("onnxruntime")
    from voice_server_moshi.corpus.evaluate import score_call
    from voice_server_moshi.corpus.run import run_corpus_call

    call = build_call(bundled_clips(), 1, 10.0, background="babble")
    sc = score_call(call, (await run_corpus_call(call, vad="cascade")).records)
    assert sc.onsets_missed == 0 and sc.backchannels_raised == 0
    echo = echo_only_call(bundled_clips(), 2, speakerphone=True)
    res = await run_corpus_call(echo, vad="cascade")
    assert not [r for r in res.records if r.name == "user-turn-started"]

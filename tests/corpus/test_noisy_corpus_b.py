"""The second noisy corpus (other voices, sox noise recipes, P.56 levels) and P.56 itself."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from voice_server_moshi.corpus.p56 import active_level_db
from voice_server_moshi.corpus.store import bundled_clips


def _db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2)))


def test_p56_active_level_ignores_pauses_where_rms_does_not() -> None:
    t = np.arange(8000) / 8000
    tone = 0.1 * np.sin(2 * np.pi * 1000 * t)
    assert active_level_db(tone) == pytest.approx(_db(tone), abs=0.3)
    u = bundled_clips()["u1"].pcm
    paused = np.concatenate([u, np.zeros(24000, np.float32), u])
    # A pause takes the RMS down; the active level barely moves.
    assert _db(u) - _db(paused) > 2.0  # 3 s of pause: the RMS drops 2.1 dB
    assert abs(active_level_db(paused) - active_level_db(u)) < 0.6
    # Scaling the speech moves the level by the gain.
    assert active_level_db(u * 0.5) == pytest.approx(active_level_db(u) - 6.02, abs=0.05)
    with pytest.raises(ValueError, match="no speech activity"):
        active_level_db(np.zeros(800))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        active_level_db(np.zeros((2, 2)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="espeak-ng and sox not installed (apt-get install espeak-ng sox)")
def test_corpus_b_is_deterministic_and_sets_snr_by_active_speech_level() -> None:
    from voice_server_moshi.corpus.noisy_b import (
        CALLERS,
        KINDS,
        LEVELS_DB,
        bed,
        corpus_b_clips,
        noise_only_set_b,
        noisy_set_b,
    )

    calls = noisy_set_b(1, (5.0,))
    assert [c.call_id for c in calls] == [f"b-call-001-{k}-snr5" for k in KINDS]
    again = noisy_set_b(1, (5.0,))
    assert all(np.array_equal(a.caller, b.caller) for a, b in zip(calls, again, strict=True))
    # The same script over every background; other clips than corpus A's.
    assert len({tuple(s.text for s in c.caller_segments) for c in calls}) == 1
    texts_a = {c.spec.text for c in bundled_clips().values()}
    assert not {s.text for s in calls[0].caller_segments} & texts_a
    clips = corpus_b_clips(0)
    assert clips["u1"].spec.voice == CALLERS[0][0]
    assert active_level_db(clips["u1"].pcm) == pytest.approx(LEVELS_DB["utterance"], abs=0.1)
    # SNR: the caller's active level over its labelled speech against the noise's power.
    clean = noisy_set_b(1, (200.0,), kinds=("car",))[0]
    noisy = calls[KINDS.index("car")]
    speech = np.concatenate([clean.caller[int(s.start_ms * 8) : int(s.end_ms * 8)]
                             for s in clean.caller_segments])
    noise = noisy.caller.astype(np.float64) - clean.caller
    assert active_level_db(speech) - _db(noise) == pytest.approx(5.0, abs=0.3)
    for kind in KINDS:  # unit power, and a seeded stretch of the recording
        x = bed(kind, 16000, np.random.default_rng(3))
        assert _db(x) == pytest.approx(0.0, abs=0.01)
        assert np.array_equal(x, bed(kind, 16000, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="unknown corpus-B background"):
        bed("rain", 10, np.random.default_rng(1))
    quiet = noise_only_set_b((10.0,), seconds=2.0)
    assert [round(_db(c.caller)) for c in quiet] == [-36] * len(KINDS)

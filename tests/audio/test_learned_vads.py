"""Silero v6 on onnxruntime, and the cascade VAD built on it (ADR 0085)."""

from __future__ import annotations

import numpy as np
import pytest

from voice_server_moshi.audio.cascade_vad import CascadeVad
from voice_server_moshi.audio.silero import CONTEXT, WINDOW, SileroProb, model_path
from voice_server_moshi.audio.silero_vad import SileroVad
from voice_server_moshi.audio.vad import EnergyVad, VadTransition
from voice_server_moshi.corpus.noise import background
from voice_server_moshi.corpus.store import bundled_clips

pytest.importorskip("onnxruntime")


def _pcm(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)


def _run(vad: object, x: np.ndarray, chunk: int = 160,
         agent: np.ndarray | None = None) -> list[VadTransition]:
    out: list[VadTransition] = []
    for i in range(0, len(x), chunk):
        if agent is not None and i >= 640:
            vad.agent_audio(agent[i - 640 : i - 640 + chunk], 0.0)  # type: ignore[attr-defined]
        out += vad.process(x[i : i + chunk])  # type: ignore[attr-defined]
    return out


def _speech_in(kind: str, snr_db: float, seed: int = 3) -> tuple[np.ndarray, float]:
    """1.5 s of background, utterance u3, 1 s more; the onset in ms."""
    clip = bundled_clips()["u3"].pcm.astype(np.float64)
    lead = 12000
    n = lead + len(clip) + 8000
    p = float(np.mean(clip**2))
    x = background(kind, n, np.random.default_rng(seed)) * np.sqrt(p / 10 ** (snr_db / 10))
    x[lead : lead + len(clip)] += clip
    return _pcm(x * 0.5), 1000 * lead / 8000


def test_the_shipped_model_is_silero_v6_with_its_licence() -> None:
    path = model_path()
    assert path.stat().st_size == 2327524
    licence = (path.parent / "LICENSE").read_text()
    assert "MIT License" in licence and "Silero Team" in licence


def test_silero_probability_speech_vs_noise_and_state_per_stream() -> None:
    x, onset = _speech_in("pink", 20.0)
    f = x.astype(np.float32) / 32768
    a, b = SileroProb(), SileroProb()
    pa = a.push(f)
    # Interleaved with another stream in small pieces: the same numbers (state per object).
    pb: list[float] = []
    for i in range(0, len(f), 100):
        pb += b.push(f[i : i + 100])
        SileroProb().push(np.ones(300, np.float32))
    assert np.allclose(pa, pb, atol=1e-6)
    assert len(pa) == len(f) // WINDOW
    w0 = int(onset * 8) // WINDOW
    assert max(pa[: w0 - 2]) < 0.3 and np.mean(pa[w0 + 3 : w0 + 20]) > 0.8
    with pytest.raises(ValueError):
        a.run(np.zeros(WINDOW, np.float32))
    assert a.run(np.zeros(CONTEXT + WINDOW, np.float32)) < 0.5


def test_silero_vad_is_chunk_size_independent_and_finds_the_onset() -> None:
    x, onset = _speech_in("pink", 10.0)
    ref = _run(SileroVad(), x, 160)
    assert ref == _run(SileroVad(), x, 77)
    starts = [t for t in ref if t.kind == "start"]
    assert len(starts) == 1 and abs(starts[0].t_ms - onset) <= 64
    with pytest.raises(TypeError):
        SileroVad().process(np.zeros(10, np.float64))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["pink", "babble", "street", "music"])
def test_cascade_catches_the_onset_in_each_background(kind: str) -> None:
    x, onset = _speech_in(kind, 10.0)
    tr = _run(CascadeVad(), x)
    starts = [t for t in tr if t.kind == "start"]
    assert starts and abs(starts[0].t_ms - onset) <= 120, (kind, tr)
    assert starts[0].decided_ms is not None and starts[0].decided_ms - onset <= 200


def _speaking_ms(tr: list[VadTransition], total_ms: float) -> float:
    t, on, since = 0.0, False, 0.0
    for x in tr:
        if x.kind == "start" and not on:
            on, since = True, x.t_ms
        elif x.kind == "end" and on:
            on, t = False, t + x.t_ms - since
    return t + (total_ms - since if on else 0.0)


def test_cascade_ignores_babble_and_horns_that_fool_the_energy_vad() -> None:
    for kind in ("babble", "street"):
        x = _pcm(background(kind, 20 * 8000, np.random.default_rng(5)) * 10 ** (-29 / 20))
        cascade = CascadeVad()
        ours, energy = _run(cascade, x), _run(EnergyVad(), x)
        # The energy VAD sits in speech through babble and starts on horns; the cascade
        # at most grazes a loud moment of the background.
        assert _speaking_ms(ours, 20000) < 1000 < _speaking_ms(energy, 20000), kind
        assert sum(t.kind == "start" for t in ours) <= 1, (kind, ours)
        # Silero ran only on candidates, not on every window.
        assert cascade.windows_run < 0.25 * len(x) / WINDOW


def test_cascade_takes_no_echo_for_the_caller_given_the_agent_audio() -> None:
    clips = bundled_clips()
    agent = np.concatenate([np.zeros(4000), clips["a1"].pcm, np.zeros(6000), clips["a2"].pcm,
                            np.zeros(8000)])
    delay = int(0.08 * 8000) + 800  # 100 ms after it was sent (the adapter sends 80 ms late)
    echo = np.zeros_like(agent)
    echo[delay:] = agent[:-delay] * 10 ** (-18 / 20)
    echo += np.random.default_rng(1).standard_normal(len(echo)) * 1e-3
    with_ref = _run(CascadeVad(), _pcm(echo), agent=_pcm(agent))
    without = _run(CascadeVad(), _pcm(echo))
    assert [t for t in with_ref if t.kind == "start"] == []
    assert [t for t in without if t.kind == "start"]  # the reference is what made the change


def test_cascade_rejects_bad_settings_and_input() -> None:
    with pytest.raises(ValueError):
        CascadeVad(p_start=1.5)
    with pytest.raises(ValueError):
        CascadeVad().process(np.zeros((2, 80), np.int16))


def test_cascade_hears_the_caller_over_the_agent_when_there_is_no_echo() -> None:
    """Words over the agent are the caller's own when nothing echoes: the echo gain is
    learnt only where the caller is silent. (Learnt from these words too, it once reached
    +29 dB and masked every later word said over the agent.)"""
    clips = bundled_clips()
    n = 16 * 8000
    agent = np.zeros(n)
    agent[8000 : 8000 + len(clips["a1"].pcm)] = clips["a1"].pcm
    agent[8000 * 9 : 8000 * 9 + len(clips["a2"].pcm)] = clips["a2"].pcm
    caller = np.random.default_rng(2).standard_normal(n) * 3e-3
    onsets_ms = []
    for clip, at_s in (("u1", 2.0), ("b5", 5.5), ("u3", 9.5), ("b2", 12.5)):
        pcm = clips[clip].pcm
        k = int(at_s * 8000)
        caller[k : k + len(pcm)] += pcm * 0.7
        onsets_ms.append(at_s * 1000)
    starts = [t.t_ms for t in _run(CascadeVad(), _pcm(caller), agent=_pcm(agent))
              if t.kind == "start"]
    for onset in onsets_ms:
        assert any(abs(t - onset) <= 120 for t in starts), (onset, starts)


@pytest.mark.parametrize("kind", ["street", "music", "pink"])
def test_cascade_ends_a_short_word_over_a_moving_background_promptly(kind: str) -> None:
    """A backchannel stays short: over a background whose own peaks clear the level gate,
    Silero decides when the word has ended (else "right" ran a second: a barge-in)."""
    clip = bundled_clips()["b3"].pcm.astype(np.float64)  # "right", 361 ms
    lead = 3 * 8000
    n = lead + len(clip) + 3 * 8000
    p = float(np.mean(clip**2))
    x = background(kind, n, np.random.default_rng(4)) * np.sqrt(p / 10 ** (10 / 10))
    x[lead : lead + len(clip)] += clip
    tr = _run(CascadeVad(), _pcm(x * 0.5))
    starts = [t for t in tr if t.kind == "start" and t.t_ms >= 2700]
    ends = [t for t in tr if t.kind == "end" and starts and t.t_ms > starts[0].t_ms]
    assert starts and ends, (kind, tr)
    # Heard, and let go in time for the full-duplex mode to call it a backchannel: shorter
    # than max_backchannel_ms (800), decided within its vad_hangover_ms (300) after that.
    assert ends[0].t_ms - starts[0].t_ms < 800, (kind, tr)
    assert ends[0].decided_ms is not None
    assert ends[0].decided_ms - starts[0].t_ms < 800 + 300, (kind, tr)


def test_cascade_keeps_a_barge_in_whole_across_its_first_pause_over_babble() -> None:
    """"Wait, sorry, ..." over babble: the 310 ms after "Wait," are at the bed's level, and
    the level gate alone ended the speech there, so the full-duplex mode took "Wait," for a
    backchannel and "sorry" for a late turn (ADR 0085, update 3). Silero bridges the pause
    early in the speech; the word is one piece longer than max_backchannel_ms."""
    clip = bundled_clips()["i1"].pcm.astype(np.float64)
    lead = 3 * 8000
    n = lead + len(clip) + 2 * 8000
    p = float(np.mean(clip**2))
    x = background("babble", n, np.random.default_rng(7)) * np.sqrt(p / 10 ** (20 / 10))
    x[lead : lead + len(clip)] += clip
    tr = _run(CascadeVad(), _pcm(x))
    onset = 1000 * lead / 8000
    starts = [t for t in tr if t.kind == "start" and t.t_ms >= onset - 300]
    assert starts and abs(starts[0].t_ms - onset) <= 120, tr
    ends = [t for t in tr if t.kind == "end" and t.t_ms > starts[0].t_ms]
    assert not ends or ends[0].t_ms - starts[0].t_ms > 800, tr


def test_cascade_learns_no_echo_from_a_loud_bed() -> None:
    """No echo, a loud bed: the bed's peaks over the agent are no evidence of an echo path.
    (Learnt as one, they put the echo reference 1-3 dB over the caller's at 5 dB SNR and
    made the first words of barge-ins late.)"""
    clips = bundled_clips()
    agent = np.concatenate([clips["a1"].pcm, clips["a2"].pcm, clips["a3"].pcm])
    bed = background("brown", len(agent), np.random.default_rng(2)) * 10 ** (-24 / 20)
    v = CascadeVad()
    _run(v, _pcm(bed), agent=_pcm(agent))
    loudest_agent = float(10 * np.log10(np.max(np.convolve(agent**2, np.ones(80) / 80))))
    echo_ref = loudest_agent + v.echo_gain_db + v.echo_margin_db
    # At the agent's loudest step the echo reference stays within 2 dB of the background's
    # (it was 5.5 dB over it when the bed's peaks were learnt as echo).
    assert echo_ref <= v.background_dbfs + v.background_db + 2.0, (echo_ref, v.background_dbfs)

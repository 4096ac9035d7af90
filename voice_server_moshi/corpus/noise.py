"""Backgrounds of the noisy corpus: babble, pink/brown noise, street, music; numpy only.

Every background is telephone band (300-3400 Hz) with unit mean power, so the caller of
:mod:`.assemble` can scale it to an SNR. Kinds:

* ``babble``: six other talkers (espeak-ng voices other than the caller's, :data:`BABBLE`),
  each looped from a random offset: a speech-shaped, non-stationary bed (a shop, a call
  centre, a TV in the room);
* ``pink`` / ``brown``: stationary 1/f and 1/f² noise (fans, line hiss, engine rumble);
* ``street``: brown rumble swelling as cars pass (2-6 s swells) with horn bursts (two-tone,
  harmonic, 0.2-0.8 s, 10-16 dB above the bed, about six a minute);
* ``music``: chords of harmonic tones changing every 0.25-0.6 s with a percussive tick on
  each beat (hold music, a radio).

The babble talkers are clips like the caller's (:mod:`.clips`): synthesized by
``make-corpus`` and committed in ``voice_server_moshi/data/corpus/babble``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..bundled import bundled_babble_dir
from .clips import ClipSpec, load_clip_wav, synthesize

RATE = 8000
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
NoiseKind = Literal["babble", "pink", "brown", "street", "music"]
NOISE_KINDS: tuple[NoiseKind, ...] = ("babble", "pink", "brown", "street", "music")

BABBLE: tuple[ClipSpec, ...] = tuple(
    ClipSpec(f"t{k}", "babble", text, voice, speed, -3.0)
    for k, (voice, speed, text) in enumerate((
        ("en-gb", 160, "We could take the train on Saturday and be back before dinner, "
                       "if the weather holds."),
        ("en-us+m3", 175, "I told him the delivery was late again and he said there was "
                          "nothing they could do about it."),
        ("en-gb-scotland", 150, "The new shop on the corner sells bread, cheese and those "
                                "little cakes you like."),
        ("en+f4", 170, "She is going to call back after the meeting to confirm the "
                       "numbers for next quarter."),
        ("en-us-nyc", 165, "Did you see the game last night? They were down by ten and "
                           "still came back to win."),
        ("en-029", 155, "Put the boxes by the door, we will load the van first thing "
                        "tomorrow morning."),
    ), start=1)
)


def fast_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFTs of a length with a large prime factor are slow."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def band(x: F64, lo: float = 300.0, hi: float = 3400.0) -> F64:
    """Telephone band by FFT mask with 100 Hz raised-cosine edges (offline only)."""
    n = len(x)
    m_len = fast_len(n)
    f = np.fft.rfftfreq(m_len, 1 / RATE)
    m = np.clip((f - (lo - 100)) / 100, 0, 1) * np.clip(((hi + 100) - f) / 100, 0, 1)
    m = 0.5 - 0.5 * np.cos(np.pi * m)
    out: F64 = np.fft.irfft(np.fft.rfft(x, m_len) * m, m_len)[:n]
    return out


def _unit(x: F64) -> F32:
    b = band(x)
    out: F32 = (b / (np.sqrt(np.mean(b**2)) + 1e-12)).astype(np.float32)
    return out


def _coloured(n: int, rng: np.random.Generator, exponent: float) -> F64:
    m = fast_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1 / RATE)
    spec[1:] /= f[1:] ** (exponent / 2)
    spec[0] = 0
    out: F64 = np.fft.irfft(spec, m)[:n]
    return out


def _babble(n: int, rng: np.random.Generator, talkers: list[F32]) -> F64:
    out = np.zeros(n)
    for u in talkers:
        x = u.astype(np.float64) / (np.sqrt(np.mean(u.astype(np.float64) ** 2)) + 1e-12)
        # Each talker pauses between sentences (0.2-1 s) like a real one, from a random start.
        parts: list[F64] = []
        total = 0
        while total < n + len(x):
            gap = np.zeros(int(rng.uniform(0.2, 1.0) * RATE))
            parts += [x, gap]
            total += len(x) + len(gap)
        loop = np.concatenate(parts)
        start = int(rng.integers(len(x)))
        out += loop[start : start + n] * rng.uniform(0.6, 1.0)
    return out


def _street(n: int, rng: np.random.Generator) -> F64:
    t = np.arange(n) / RATE
    bed = _coloured(n, rng, 2.0)
    bed = band(bed)
    bed /= np.sqrt(np.mean(bed**2)) + 1e-12
    swell = np.ones(n)
    c = rng.uniform(0, 3)
    while c < t[-1]:
        width = rng.uniform(2, 6)
        swell += rng.uniform(1, 3) * np.exp(-(((t - c) / (width / 2.5)) ** 2))
        c += rng.uniform(2, 7)
    bed *= swell / np.sqrt(np.mean(swell**2))
    horns = np.zeros(n)
    c = rng.uniform(1, 8)
    while c < t[-1] - 1:
        dur = rng.uniform(0.2, 0.8)
        i0, i1 = int(c * RATE), int((c + dur) * RATE)
        tt = t[i0:i1] - c
        f1 = rng.uniform(350, 500)
        tone = sum(np.sin(2 * np.pi * f1 * r * h * tt) / h
                   for r in (1.0, 1.26) for h in (1, 2, 3, 4, 5))
        env = np.minimum(1, np.minimum(tt, tt[-1] - tt) / 0.02)
        burst = tone * env
        horns[i0:i1] += burst / np.sqrt(np.mean(burst**2)) * 10 ** (rng.uniform(10, 16) / 20)
        c += dur + rng.uniform(4, 16)
    out: F64 = bed + horns
    return out


def _music(n: int, rng: np.random.Generator) -> F64:
    out = np.zeros(n)
    i = 0
    beat = rng.uniform(0.25, 0.6)
    root = rng.uniform(110, 220)
    while i < n:
        m = min(n - i, int(beat * RATE * rng.choice([1, 1, 2])))
        tt = np.arange(m) / RATE
        chord = root * 2 ** (rng.choice([0, 2, 4, 5, 7, 9]) / 12) * np.array([1, 1.26, 1.5])
        env = np.exp(-tt * rng.uniform(1.5, 4)) * np.minimum(1, tt / 0.01)
        seg = sum(np.sin(2 * np.pi * f * h * tt) / h**1.5 for f in chord for h in (1, 2, 3, 4))
        tick = rng.standard_normal(m) * np.exp(-tt * 60) * 0.8
        out[i : i + m] += seg * env + tick
        i += m
    return out


def background(kind: str, n: int, rng: np.random.Generator,
               talkers: list[F32] | None = None) -> F32:
    """``n`` samples of background ``kind``, telephone band, unit power."""
    if kind == "babble":
        return _unit(_babble(n, rng, talkers if talkers is not None else bundled_talkers()))
    if kind == "pink":
        return _unit(_coloured(n, rng, 1.0))
    if kind == "brown":
        return _unit(_coloured(n, rng, 2.0))
    if kind == "street":
        return _unit(_street(n, rng))
    if kind == "music":
        return _unit(_music(n, rng))
    raise ValueError(f"unknown background {kind!r}; one of {', '.join(NOISE_KINDS)}")


def synthesize_babble(out_dir: Path) -> None:
    """The babble talkers (espeak-ng + sox, as the caller clips) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for spec in BABBLE:
        synthesize(spec, out_dir / f"{spec.name}.wav")
    (out_dir / "babble.json").write_text(
        json.dumps([asdict(s) for s in BABBLE], indent=1) + "\n", encoding="utf-8")




def load_talkers(d: Path) -> list[F32]:
    return [load_clip_wav(d / f"{s.name}.wav") for s in BABBLE]


@lru_cache(maxsize=1)
def bundled_talkers_cached() -> tuple[F32, ...]:
    return tuple(load_talkers(bundled_babble_dir()))


def bundled_talkers() -> list[F32]:
    return list(bundled_talkers_cached())

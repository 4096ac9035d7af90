"""Calls assembled from the clips, with ground truth: numpy only, deterministic per seed.

A call is a few exchanges. Each: the caller says an utterance, the agent answers after a
pause, and during the agent's answer the caller either backchannels (once or twice, at a
random gain), barges in (the scripted agent then yields 250-450 ms later, as Moshi does,
FDB: 0.26 s), or stays quiet. Band-limited noise is added at the requested SNR, where SNR is
caller speech power (over the labelled speech) to noise power.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .clips import Clip

RATE = 8000
F32 = npt.NDArray[np.float32]
#: Makes ``n`` samples of a unit-power background from a seeded generator.
BedMaker = Callable[[int, np.random.Generator], F32]
#: The scripted agent's idle floor: Moshi's silence is quiet, not digital zero.
AGENT_FLOOR_DBFS = -65.0


@dataclass(frozen=True, slots=True)
class Segment:
    start_ms: float
    end_ms: float
    kind: str  # utterance | backchannel | barge-in | agent
    text: str
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "start_ms": round(self.start_ms, 1), "end_ms": round(self.end_ms, 1),
            "kind": self.kind, "text": self.text,
        }
        if self.truncated:
            d["truncated"] = True
        return d


@dataclass(slots=True)
class CorpusCall:
    call_id: str
    seed: int
    snr_db: float
    caller: F32 = field(repr=False)
    agent: F32 = field(repr=False)
    caller_segments: list[Segment]
    agent_segments: list[Segment]
    #: Noisy corpus only (:mod:`.noisy`): the background kind, and echo of the agent.
    background: str | None = None
    echo: dict[str, float] | None = None

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.caller) / RATE

    def labels(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id, "seed": self.seed, "snr_db": self.snr_db,
            "sample_rate": RATE, "duration_ms": round(self.duration_ms, 1),
            "caller": [s.to_json() for s in self.caller_segments],
            "agent": [s.to_json() for s in self.agent_segments],
            **({"background": self.background} if self.background else {}),
            **({"echo": self.echo} if self.echo else {}),
        }


def _ms(n: int) -> float:
    return 1000.0 * n / RATE


def _at(ms: float) -> int:
    return round(ms * RATE / 1000.0)


def _place(track: list[tuple[int, F32]], start_ms: float, pcm: F32) -> tuple[float, float]:
    i = _at(start_ms)
    track.append((i, pcm))
    return _ms(i), _ms(i + len(pcm))


def _render(parts: list[tuple[int, F32]], n: int) -> F32:
    out = np.zeros(n, dtype=np.float32)
    for i, pcm in parts:
        out[i : i + len(pcm)] += pcm[: max(0, n - i)]
    return out


def band_noise(n: int, rng: np.random.Generator) -> F32:
    """Pink-ish noise limited to the telephone band (300-3400 Hz), unit power."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    shape = np.where((f >= 300) & (f <= 3400), 1 / np.sqrt(np.maximum(f, 1.0)), 0.0)
    x = np.fft.irfft(spec * shape, n)
    out: F32 = (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)
    return out


def build_call(
    clips: dict[str, Clip], seed: int, snr_db: float, exchanges: int = 4,
    background: str | None = None,
    talkers: list[F32] | None = None,
    *,
    bed: BedMaker | None = None,
    speech_power: Callable[[F32], float] | None = None,
) -> CorpusCall:
    """One call; ``background`` (a :data:`.noise.NOISE_KINDS` kind) replaces the standard
    set's band-limited noise, drawn from its own generator so the script is the same.
    ``bed`` makes a background of another name (the second noisy corpus, :mod:`.noisy_b`);
    ``speech_power`` measures the caller's labelled speech for the SNR (default: its mean
    square; :mod:`.noisy_b` passes the P.56 active level)."""
    rng = np.random.default_rng(seed)
    by_kind: dict[str, list[Clip]] = {}
    for c in clips.values():
        by_kind.setdefault(c.spec.kind, []).append(c)
    for kind in by_kind.values():
        kind.sort(key=lambda c: c.spec.name)
    caller_parts: list[tuple[int, F32]] = []
    agent_parts: list[tuple[int, F32]] = []
    csegs: list[Segment] = []
    asegs: list[Segment] = []
    t = float(rng.uniform(500, 1000))
    for _ in range(exchanges):
        u = by_kind["utterance"][rng.integers(len(by_kind["utterance"]))]
        s, e = _place(caller_parts, t, u.pcm)
        csegs.append(Segment(s, e, "utterance", u.spec.text))
        a = by_kind["agent"][rng.integers(len(by_kind["agent"]))]
        t_agent = e + float(rng.uniform(500, 900))
        a_pcm = a.pcm
        event = rng.choice(["backchannel", "barge-in", "none"], p=[0.45, 0.45, 0.1])
        last_caller_end = e
        a_dur = _ms(len(a_pcm))
        if event == "backchannel":
            tb = t_agent + float(rng.uniform(700, 1300))
            for _k in range(int(rng.integers(1, 3))):
                b = by_kind["backchannel"][rng.integers(len(by_kind["backchannel"]))]
                if tb + b.duration_ms > t_agent + a_dur - 700:
                    break  # keep the agent talking well past the backchannel
                gain = float(rng.uniform(0.5, 1.0))
                s, e = _place(caller_parts, tb, (b.pcm * gain).astype(np.float32))
                csegs.append(Segment(s, e, "backchannel", b.spec.text))
                last_caller_end = e
                tb = e + float(rng.uniform(900, 1500))
        elif event == "barge-in":
            i = by_kind["barge-in"][rng.integers(len(by_kind["barge-in"]))]
            tb = t_agent + float(rng.uniform(1000, max(1100.0, a_dur - 1500)))
            s, e = _place(caller_parts, tb, i.pcm)
            csegs.append(Segment(s, e, "barge-in", i.spec.text))
            last_caller_end = e
            # The agent yields: cut its clip 250-450 ms after the barge-in, with a fade.
            keep = _at(s + float(rng.uniform(250, 450)) - t_agent)
            if keep < len(a_pcm):
                fade = min(160, keep)
                a_pcm = a_pcm[:keep].copy()
                a_pcm[keep - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
        s, e = _place(agent_parts, t_agent, a_pcm)
        truncated = len(a_pcm) < len(a.pcm)
        text = a.spec.text
        if truncated:
            # Only the words said before the agent yielded (spread evenly: an estimate).
            words = text.split()
            text = " ".join(words[: max(1, round(len(words) * len(a_pcm) / len(a.pcm)))])
        asegs.append(Segment(s, e, "agent", text, truncated=truncated))
        t = max(e, last_caller_end) + float(rng.uniform(700, 1300))
    n = _at(t + 500)
    caller = _render(caller_parts, n)
    agent = _render(agent_parts, n)
    speech = np.concatenate([caller[_at(g.start_ms) : _at(g.end_ms)] for g in csegs])
    p_speech = speech_power(speech) if speech_power is not None else \
        float(np.mean(speech.astype(np.float64) ** 2))
    if bed is not None and background is not None:
        rng.standard_normal(n)
        noise_bed = bed(n, np.random.default_rng([seed, 1000 + sum(map(ord, background))]))
    elif background is None:
        noise_bed = band_noise(n, rng)
    else:
        rng.standard_normal(n)  # what band_noise draws: the agent's floor stays the same
        from .noise import NOISE_KINDS
        from .noise import background as make_background

        kinds: tuple[str, ...] = NOISE_KINDS
        if background not in kinds:
            raise ValueError(f"unknown background {background!r}; one of {', '.join(kinds)}")
        kind_rng = np.random.default_rng([seed, 1 + kinds.index(background)])
        noise_bed = make_background(background, n, kind_rng, talkers)
    noise = noise_bed * np.float32(np.sqrt(p_speech / 10 ** (snr_db / 10)))
    caller = np.clip(caller + noise, -1, 1).astype(np.float32)
    if background is None:
        floor = band_noise(n, rng) * np.float32(10 ** (AGENT_FLOOR_DBFS / 20))
    else:
        from .noise import background as make_floor

        floor = make_floor("pink", n, rng) * np.float32(10 ** (AGENT_FLOOR_DBFS / 20))
    agent = np.clip(agent + floor, -1, 1).astype(np.float32)
    call_id = f"call-{seed:03d}-snr{snr_db:g}" if background is None else \
        f"call-{seed:03d}-{background}-snr{snr_db:g}"
    return CorpusCall(call_id, seed, snr_db, caller, agent, csegs, asegs, background)


def standard_set(
    clips: dict[str, Clip], calls: int = 8, snrs: tuple[float, ...] = (20.0,), first_seed: int = 1
) -> list[CorpusCall]:
    """``calls`` calls per SNR, seeds ``first_seed``.. (the same seeds at every SNR)."""
    return [
        build_call(clips, first_seed + k, snr)
        for snr in snrs
        for k in range(calls)
    ]

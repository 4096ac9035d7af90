"""The noisy corpus: the standard calls over real-line backgrounds, noise-only and echo calls.

* speech calls: :func:`.assemble.build_call` scripts (utterances, backchannels, barge-ins;
  every caller segment labelled) over each :data:`.noise.NOISE_KINDS` background at each
  SNR (caller speech power over its labelled segments to background power);
* noise-only calls: the background alone, no caller speech, the agent silent, at the level
  it has in the speech calls of that SNR (false starts per minute);
* echo-only calls: the agent talks, the caller says nothing, and the caller channel carries
  the agent's audio back at -15 to -25 dB with 20-200 ms delay (line echo: the delayed
  copy; speakerphone: low-passed with two reflections), over a quiet line. The delay is
  counted from when the agent audio leaves the adapter: the scripted agent emits its track
  time T at caller time T + 80 ms (one Moshi frame), and echo cannot precede its source.

Everything is telephone band at 8 kHz; callers go through µ-law on the way in (the corpus
runner and ``make-corpus`` both encode them).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..moshi.transport import MOSHI_FRAME_MS
from .assemble import AGENT_FLOOR_DBFS, RATE, CorpusCall, Segment, build_call
from .clips import Clip
from .noise import NOISE_KINDS, background, band

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Active speech power of the assembled callers (clips at -3 dB peak): noise-only calls
#: take their level from it, so "10 dB" means the background of the 10 dB speech calls.
CALLER_SPEECH_DBFS = -19.0
#: A quiet line under the echo-only calls.
LINE_FLOOR_DBFS = -60.0


def noisy_set(
    clips: dict[str, Clip], calls: int, snrs: tuple[float, ...],
    kinds: tuple[str, ...] = NOISE_KINDS, first_seed: int = 1,
    talkers: list[F32] | None = None,
) -> list[CorpusCall]:
    """``calls`` speech calls per background kind and SNR (the same scripts in each);
    ``talkers``: the babble voices (default: the committed ones)."""
    return [build_call(clips, first_seed + k, snr, background=kind, talkers=talkers)
            for kind in kinds for snr in snrs for k in range(calls)]


def noise_only_call(kind: str, snr_db: float, seed: int = 1, seconds: float = 20.0,
                    talkers: list[F32] | None = None) -> CorpusCall:
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown background {kind!r}; one of {', '.join(NOISE_KINDS)}")
    n = int(seconds * RATE)
    rng = np.random.default_rng([seed, 100 + NOISE_KINDS.index(kind)])
    level = 10 ** ((CALLER_SPEECH_DBFS - snr_db) / 20)
    caller = np.clip(background(kind, n, rng, talkers) * level, -1, 1).astype(np.float32)
    floor = np.float32(10 ** (AGENT_FLOOR_DBFS / 20))
    agent = (background("pink", n, rng) * floor).astype(np.float32)
    return CorpusCall(f"noise-{seed:03d}-{kind}-snr{snr_db:g}", seed, snr_db, caller, agent,
                      [], [], background=kind)


def echo_only_call(clips: dict[str, Clip], seed: int, speakerphone: bool) -> CorpusCall:
    """The agent's clips in turn with pauses; the caller channel holds only their echo."""
    rng = np.random.default_rng([seed, 200 + int(speakerphone)])
    agents = sorted((c for c in clips.values() if c.spec.kind == "agent"),
                    key=lambda c: c.spec.name)
    t = int(rng.uniform(0.5, 1.0) * RATE)
    parts: list[tuple[int, F32]] = []
    segs: list[Segment] = []
    for _ in range(4):
        a = agents[int(rng.integers(len(agents)))]
        parts.append((t, a.pcm))
        segs.append(Segment(1000 * t / RATE, 1000 * (t + len(a.pcm)) / RATE, "agent",
                            a.spec.text))
        t += len(a.pcm) + int(rng.uniform(0.6, 1.5) * RATE)
    n = t + RATE
    agent: F64 = np.zeros(n, dtype=np.float64)
    for i, pcm in parts:
        agent[i : i + len(pcm)] += pcm
    gain_db = float(rng.uniform(-25, -15))
    delay_ms = float(rng.uniform(20, 200))
    shift = int((delay_ms + MOSHI_FRAME_MS) * RATE / 1000)
    echo: F64 = np.zeros(n)
    echo[shift:] = agent[: n - shift]
    if speakerphone:
        # A room: duller (first-order low-pass) with two reflections 7-25 ms later.
        echo = np.asarray(np.convolve(echo, [0.5, 0.3, 0.2])[:n], dtype=np.float64)
        for lag_ms, g in ((rng.uniform(7, 14), 0.5), (rng.uniform(15, 25), 0.3)):
            k = int(lag_ms * RATE / 1000)
            echo[k:] += g * echo[:-k]
        echo = band(echo)
    p_agent = np.mean(np.concatenate([agent[i : i + len(p)] for i, p in parts]) ** 2)
    p_echo = np.mean(np.concatenate([echo[i + shift : i + shift + len(p)] for i, p in parts])
                     ** 2)
    echo *= np.sqrt(p_agent / max(p_echo, 1e-12)) * 10 ** (gain_db / 20)
    line = background("pink", n, rng) * 10 ** (LINE_FLOOR_DBFS / 20)
    caller = np.clip(echo + line, -1, 1).astype(np.float32)
    floor = background("pink", n, rng) * np.float32(10 ** (AGENT_FLOOR_DBFS / 20))
    agent32 = np.clip(agent + floor, -1, 1).astype(np.float32)
    kind = "speakerphone" if speakerphone else "line"
    return CorpusCall(f"echo-{seed:03d}-{kind}", seed, 0.0, caller, agent32, [], segs,
                      echo={"gain_db": round(gain_db, 1), "delay_ms": round(delay_ms, 1),
                            "speakerphone": float(speakerphone)})


def echo_set(clips: dict[str, Clip], calls: int, first_seed: int = 1) -> list[CorpusCall]:
    """``calls`` echo-only calls, alternating line and speakerphone echo."""
    return [echo_only_call(clips, first_seed + k, speakerphone=bool(k % 2))
            for k in range(calls)]


def noise_only_set(snrs: tuple[float, ...], kinds: tuple[str, ...] = NOISE_KINDS,
                   seed: int = 1, seconds: float = 20.0,
                   talkers: list[F32] | None = None) -> list[CorpusCall]:
    return [noise_only_call(kind, snr, seed, seconds, talkers) for kind in kinds
            for snr in snrs]

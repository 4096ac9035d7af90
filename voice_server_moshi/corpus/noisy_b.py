"""The second noisy corpus ("B"), made another way than :mod:`.noisy` (corpus A), so the
caller VAD is not tuned to one generator (ADR 0085, update 3).

What differs from corpus A:

* **voices and rates**: three other espeak-ng callers (:data:`CALLERS`, 140-200 words a
  minute, female and male, British and American), one caller per call, other sentences
  (:data:`TEXTS`), another agent voice; the same call scripts (:func:`.assemble.build_call`);
* **levels by active speech level**: every clip is set to an ITU-T P.56 active level
  (:mod:`.p56`; sentences -26 dB, backchannels -30 dB, the agent -26 dB) instead of a peak
  level, and the SNR is the caller's active speech level over the labelled speech against
  the background's power, not the mean square over the labels;
* **other noise recipes, made by sox** (:data:`KINDS`): ``crowd`` (four other espeak-ng
  talkers speaking without pauses, mixed, then sox ``reverb``: a reverberant room),
  ``car`` (sox brown noise through ``lowpass`` with a slow ``tremolo``: engine and road),
  ``white`` (sox white noise: line hiss, flatter than corpus A's pink) and ``hum`` (sox pink
  noise mixed with a 425 Hz tone and its harmonics: a fan or a ventilation hum).

Nothing is committed but this file: the clips and the 60 s noise recordings are made with
espeak-ng and sox on first use (``sox -R``: repeatable) and cached under
``$XDG_CACHE_HOME/voice-server-moshi/corpus-b/<key>`` (``~/.cache`` by default), the key a
hash of every spec and recipe; each call then takes its stretch of noise from a seeded
generator. Without espeak-ng or sox it raises :class:`.clips.ToolMissingError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import asdict
from functools import cache, partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..audio.wavio import write_wav_pcm16
from .assemble import RATE, CorpusCall, build_call
from .clips import Clip, ClipSpec, check_tools, load_clip_wav, synthesize
from .noise import band
from .p56 import active_level_db

__all__ = ["CALLERS", "KINDS", "corpus_b_clips", "noise_only_set_b", "noisy_set_b"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Caller voices and speaking rates (words a minute): one per call, by seed.
CALLERS: tuple[tuple[str, int], ...] = (
    ("en-gb-x-rp+f2", 140), ("en-us+m4", 200), ("en-gb-x-gbcwmd+f5", 175))
AGENT_B = ("en-gb-x-gbclan+m1", 160)
TEXTS: dict[str, tuple[str, ...]] = {
    "utterance": ("Hello, I need to change the address on my account.",
                  "It's the flat above the bakery, number twelve.",
                  "The parcel never arrived, and that was two weeks ago.",
                  "Could you send me the confirmation by email?",
                  "Right, that's all I needed, cheers."),
    "backchannel": ("mhm", "yes", "I see", "alright", "uh-huh", "go on"),
    "barge-in": ("Sorry, hang on, that's the wrong postcode.",
                 "No, wait, I said the twelfth, not the twentieth.",
                 "Excuse me, can I stop you there for a second?"),
    "agent": ("Of course. I can update that for you now, I just need to confirm a few "
              "details first.",
              "I can see the order was dispatched on Monday, and the courier marked it as "
              "delivered on Wednesday afternoon.",
              "I have sent a new confirmation to the email address on your account, it "
              "should arrive in the next few minutes."),
}
#: Active speech levels (P.56) the clips are set to, by kind.
LEVELS_DB = {"utterance": -26.0, "barge-in": -26.0, "backchannel": -30.0, "agent": -26.0}
#: The crowd's talkers: other voices than every caller, agent and corpus A's babble.
CROWD: tuple[tuple[str, int, str], ...] = (
    ("en-gb-x-gbclan+f1", 165, "Two coffees and a slice of the lemon cake, please, "
                               "and could we sit by the window"),
    ("en-us+m6", 180, "He said the meeting moved to Thursday but nobody told the team "
                      "in the other office"),
    ("en-gb-x-rp+m2", 150, "If you take the second left after the station you will see "
                           "the car park right in front of you"),
    ("en+f2", 185, "I have been waiting for the plumber all morning and he still has not "
                   "called to say when"),
)
KINDS: tuple[str, ...] = ("crowd", "car", "white", "hum")
#: sox ``synth`` recipes (60 s at 8 kHz); ``crowd`` is made from :data:`CROWD`.
SOX_RECIPES: dict[str, tuple[str, ...]] = {
    "car": ("synth", "60", "brownnoise", "lowpass", "700", "tremolo", "0.3", "60"),
    "white": ("synth", "60", "whitenoise"),
    "hum": ("synth", "60", "pinknoise", "synth", "60", "sine", "mix", "425",
            "synth", "60", "sine", "mix", "850", "synth", "60", "sine", "mix", "1275"),
}
_NOISE_S = 60


def _specs() -> list[ClipSpec]:
    out = [ClipSpec(f"a{k}", "agent", t, AGENT_B[0], AGENT_B[1], -3.0)
           for k, t in enumerate(TEXTS["agent"], 1)]
    for v, (voice, speed) in enumerate(CALLERS):
        for kind, prefix in (("utterance", "u"), ("backchannel", "b"), ("barge-in", "i")):
            out += [ClipSpec(f"v{v}-{prefix}{k}", kind, t, voice, speed, -3.0)  # type: ignore[arg-type]
                    for k, t in enumerate(TEXTS[kind], 1)]
    out += [ClipSpec(f"crowd{k}", "babble", t, voice, speed, -3.0)
            for k, (voice, speed, t) in enumerate(CROWD, 1)]
    return out


def _key() -> str:
    blob = json.dumps([[asdict(s) for s in _specs()], SOX_RECIPES, LEVELS_DB, _NOISE_S],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "voice-server-moshi" / "corpus-b" / _key()


def _sox(args: list[str], out: Path, inp: Path | None = None) -> None:
    cmd = ["sox", "-R", "-D"] + ([str(inp)] if inp else ["-n", "-r", str(RATE), "-c", "1"])
    subprocess.run([*cmd, "-b", "16", str(out), *args], check=True, capture_output=True)


def _make(d: Path) -> None:
    """Synthesize every clip and noise recording into ``d`` (atomically: a temp dir first)."""
    check_tools()
    d.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d.parent) as tmp:
        t = Path(tmp)
        for spec in _specs():
            synthesize(spec, t / f"{spec.name}.wav")
        for kind, recipe in SOX_RECIPES.items():
            _sox(list(recipe), t / f"noise-{kind}.wav")
        talkers = [load_clip_wav(t / f"crowd{k}.wav").astype(np.float64)
                   for k in range(1, len(CROWD) + 1)]
        n = _NOISE_S * RATE
        mix = np.zeros(n)
        for k, x in enumerate(talkers):
            x = x / (np.sqrt(np.mean(x**2)) + 1e-12)
            loop = np.tile(x, n // len(x) + 2)
            off = (k * len(x)) // len(talkers)
            mix += loop[off : off + n]
        write_wav_pcm16(t / "crowd-dry.wav", 0.1 * mix / (np.abs(mix).max() + 1e-12), RATE)
        _sox(["reverb", "60", "50", "80"], t / "noise-crowd.wav", t / "crowd-dry.wav")
        (t / "crowd-dry.wav").unlink()
        (t / "specs.json").write_text(json.dumps([asdict(s) for s in _specs()], indent=1))
        os.replace(t, d)
        os.mkdir(t)  # for TemporaryDirectory's cleanup


@cache
def _ready() -> Path:
    d = cache_dir()
    if not (d / "specs.json").exists():
        _make(d)
    return d


def _at_level(pcm: F32, level_db: float) -> F32:
    gain = 10 ** ((level_db - active_level_db(pcm)) / 20)
    out: F32 = np.clip(pcm.astype(np.float64) * gain, -1, 1).astype(np.float32)
    return out


@cache
def corpus_b_clips(voice: int) -> dict[str, Clip]:
    """The clips for calls by caller ``voice`` (an index of :data:`CALLERS`), each set to
    its kind's active speech level (:data:`LEVELS_DB`), keyed as :func:`.assemble.build_call`
    expects (``u1``.., ``b1``.., ``i1``.., ``a1``..)."""
    d = _ready()
    out: dict[str, Clip] = {}
    for spec in _specs():
        if spec.kind == "babble" or (spec.kind != "agent"
                                     and not spec.name.startswith(f"v{voice}-")):
            continue
        pcm = _at_level(load_clip_wav(d / f"{spec.name}.wav"), LEVELS_DB[spec.kind])
        name = spec.name.split("-")[-1]
        out[name] = Clip(spec, pcm)
    return out


@cache
def _noise(kind: str) -> F64:
    if kind not in KINDS:
        raise ValueError(f"unknown corpus-B background {kind!r}; one of {', '.join(KINDS)}")
    x = load_clip_wav(_ready() / f"noise-{kind}.wav").astype(np.float64)
    return band(x - x.mean())


def bed(kind: str, n: int, rng: np.random.Generator) -> F32:
    """``n`` samples of background ``kind``: a seeded stretch of its recording (looped),
    telephone band, unit power."""
    src = _noise(kind)
    start = int(rng.integers(len(src)))
    x = np.tile(src, n // len(src) + 2)[start : start + n]
    out: F32 = (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)
    return out


def _active_power(speech: F32) -> float:
    return float(10 ** (active_level_db(speech) / 10))


def noisy_set_b(calls: int, snrs: tuple[float, ...], kinds: tuple[str, ...] = KINDS,
                first_seed: int = 1) -> list[CorpusCall]:
    """``calls`` speech calls per kind and SNR; call ``k`` is spoken by caller voice
    ``k % 3`` (the same scripts and voices at every kind and SNR)."""
    out = []
    for kind in kinds:
        for snr in snrs:
            for k in range(calls):
                seed = first_seed + k
                c = build_call(corpus_b_clips(k % len(CALLERS)), seed, snr, background=kind,
                               bed=partial(bed, kind), speech_power=_active_power)
                c.call_id = f"b-{c.call_id}"
                out.append(c)
    return out


def noise_only_set_b(snrs: tuple[float, ...], kinds: tuple[str, ...] = KINDS,
                     seed: int = 1, seconds: float = 20.0) -> list[CorpusCall]:
    """The background alone at its level in the speech calls of each SNR (against the
    callers' -26 dB active level), the agent silent: false starts per minute."""
    from .assemble import AGENT_FLOOR_DBFS
    from .noise import background

    out = []
    n = int(seconds * RATE)
    for kind in kinds:
        for snr in snrs:
            rng = np.random.default_rng([seed, 300 + KINDS.index(kind)])
            level = 10 ** ((LEVELS_DB["utterance"] - snr) / 20)
            caller = np.clip(bed(kind, n, rng) * level, -1, 1).astype(np.float32)
            agent = (background("pink", n, rng) * np.float32(10 ** (AGENT_FLOOR_DBFS / 20))
                     ).astype(np.float32)
            out.append(CorpusCall(f"b-noise-{seed:03d}-{kind}-snr{snr:g}", seed, snr, caller,
                                  agent, [], [], background=kind))
    return out

"""``voice-server-moshi bench vad``: caller VAD on labelled telephone-band speech, as JSON.

Speech comes from ``espeak-ng`` (a local speech synthesiser; no network): a few sentences
in several voices, resampled to 8 kHz, band-limited to 300-3400 Hz, placed after 1-2.5 s
of noise (white and pink, telephone band) at 10 and 20 dB SNR (active speech level over
noise power), through a G.711 µ-law round trip. The labels come from the clean speech:
onset/offset = first/last 10 ms frame within 35 dB of the loudest. Each trial runs a fresh
detector fed in 20 ms chunks. Reported per SNR: onset detection delay (stream time at which
the start is decided minus the labelled onset; goal p90 <= 150 ms at 20 dB), misses, false
starts per minute of noise-only audio, end decision lag, and CPU per 20 ms frame. Silero
VAD is measured too when the ``silero-vad`` package is importable (it is not a dependency).

Needs ``espeak-ng`` on PATH (Debian/Ubuntu: ``apt-get install espeak-ng``); without it the
command says so and exits 2.
"""

from __future__ import annotations

import importlib
import io
import json
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._cli_help import command_parser
from ..audio import g711
from ..audio.vad import EnergyVad

SR = 8000
SENTENCES = (
    "Hello, I would like to check the status of my order.",
    "Sure, my account number is four five six seven.",
    "Please call me back tomorrow morning.",
    "Actually, I think there is a mistake on the bill.",
    "Thanks, that is all I needed.",
    "Five hundred and twenty dollars.",
    "No, not that one, the other address.",
    "Can you repeat that please?",
)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland+m3")
SNRS_DB = (20.0, 10.0)
NOISES = ("white", "pink", "babble")

F64 = NDArray[np.float64]


def _synth(text: str, voice: str, exe: str) -> tuple[F64, int]:
    wav = subprocess.run(
        [exe, "-v", voice, "-s", "160", "--stdout", text], check=True, capture_output=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return pcm / 32768.0, rate


def _band(x: F64, lo: float = 300.0, hi: float = 3400.0) -> F64:
    """Telephone band-pass by FFT mask with 100 Hz raised-cosine edges (offline only)."""
    n = len(x)
    f = np.fft.rfftfreq(n, 1 / SR)
    m = np.clip((f - (lo - 100)) / 100, 0, 1) * np.clip(((hi + 100) - f) / 100, 0, 1)
    m = 0.5 - 0.5 * np.cos(np.pi * m)
    out: F64 = np.fft.irfft(np.fft.rfft(x) * m, n)
    return out


def _noise(kind: str, n: int, rng: np.random.Generator, speech: list[F64]) -> F64:
    w = rng.standard_normal(n)
    if kind == "babble":
        # Six other talkers at random offsets: non-stationary, speech-shaped background.
        w = np.zeros(n)
        for _ in range(6):
            u = speech[int(rng.integers(len(speech)))]
            loop = np.tile(u, n // len(u) + 2)
            start = int(rng.integers(len(u)))
            w += loop[start : start + n] / np.sqrt(np.mean(u**2))
    elif kind == "pink":
        spec = np.fft.rfft(w)
        f = np.fft.rfftfreq(n, 1 / SR)
        spec[1:] /= np.sqrt(f[1:])
        spec[0] = 0
        w = np.fft.irfft(spec, n)
    b = _band(w)
    out: F64 = b / np.sqrt(np.mean(b**2))
    return out


def _labels(clean: F64) -> tuple[float, float, float]:
    """(onset ms, offset ms, active speech power) from the clean utterance."""
    step = SR // 100
    frames = clean[: len(clean) // step * step].reshape(-1, step)
    p = np.mean(frames**2, axis=1)
    active = p >= p.max() * 10 ** (-35 / 10)
    idx = np.flatnonzero(active)
    return 10.0 * idx[0], 10.0 * (idx[-1] + 1), float(np.mean(p[active]))


def _speech(exe: str) -> list[F64]:
    import soxr

    out = []
    for v in VOICES:
        for s in SENTENCES:
            x, rate = _synth(s, v, exe)
            y = soxr.resample(x, rate, SR)
            out.append(_band(np.asarray(y, dtype=np.float64)))
    return out


Detector = Callable[[NDArray[np.int16]], list[tuple[str, float, float]]]


def _energy_detector() -> Detector:
    vad = EnergyVad()

    def run(chunk: NDArray[np.int16]) -> list[tuple[str, float, float]]:
        return [(t.kind, t.t_ms, t.decided_ms or t.t_ms) for t in vad.process(chunk)]

    return run


def _silero_factory() -> Callable[[], Detector] | None:
    try:
        # Not a dependency: measured when present (pip install silero-vad), for ADR 0011.
        silero_vad: Any = importlib.import_module("silero_vad")
        torch: Any = importlib.import_module("torch")
    except ImportError:
        return None
    torch.set_num_threads(1)
    model = silero_vad.load_silero_vad()

    def make() -> Detector:
        # Silero at 8 kHz takes 256-sample (32 ms) chunks; VADIterator's defaults: start at
        # p >= 0.5, end after 300 ms (as ours) below 0.35.
        model.reset_states()
        buf: NDArray[np.float32] = np.zeros(0, np.float32)
        state = {"n": 0, "speaking": False, "quiet_since": -1.0, "last_loud": 0.0}

        def run(chunk: NDArray[np.int16]) -> list[tuple[str, float, float]]:
            nonlocal buf
            buf = np.concatenate((buf, chunk.astype(np.float32) / np.float32(32768)))
            out: list[tuple[str, float, float]] = []
            while len(buf) >= 256:
                x, buf = buf[:256], buf[256:]
                t0 = state["n"] * 1000 / SR
                state["n"] += 256
                t1 = state["n"] * 1000 / SR
                with torch.no_grad():
                    p = float(model(torch.from_numpy(x), SR))
                if not state["speaking"] and p >= 0.5:
                    state["speaking"], state["last_loud"] = True, t1
                    out.append(("start", t0, t1))
                elif state["speaking"]:
                    if p >= 0.35:
                        state["last_loud"] = t1
                    elif t1 - state["last_loud"] >= 300:
                        state["speaking"] = False
                        out.append(("end", state["last_loud"], t1))
            return out

        return run

    return make


def _pct(v: list[float], q: float) -> float | None:
    return round(float(np.percentile(v, q)), 1) if v else None


def _evaluate(
    make: Callable[[], Detector], trials: list[tuple[NDArray[np.int16], float, float]]
) -> dict[str, Any]:
    delays, t_err, end_lag = [], [], []
    misses = false_starts = 0
    noise_ms = 0.0
    cpu_s = 0.0
    frames = 0
    for x, on, off in trials:
        det = make()
        events: list[tuple[str, float, float]] = []
        t0 = time.perf_counter()
        for i in range(0, len(x), 160):
            events += det(x[i : i + 160])
        cpu_s += time.perf_counter() - t0
        frames += -(-len(x) // 160)
        noise_ms += len(x) / SR * 1000 - (off - on)
        starts = [e for e in events if e[0] == "start"]
        hits = [e for e in starts if on - 100 <= e[1] <= off]
        false_starts += sum(1 for e in starts if not on - 100 <= e[1] <= off + 100)
        if not hits:
            misses += 1
            continue
        delays.append(hits[0][2] - on)
        t_err.append(hits[0][1] - on)
        ends = [e for e in events if e[0] == "end" and e[2] >= off]
        if ends:
            end_lag.append(ends[0][2] - off)
    return {
        "trials": len(trials),
        "onset_delay_ms": {"p50": _pct(delays, 50), "p90": _pct(delays, 90),
                           "max": _pct(delays, 100)},
        "onset_time_error_ms": {"p50": _pct(t_err, 50), "p90": _pct(t_err, 90)},
        "misses": misses,
        "false_starts": false_starts,
        "false_starts_per_min_noise": round(false_starts / (noise_ms / 60000), 2),
        "end_decision_lag_ms_p50": _pct(end_lag, 50),
        "cpu_us_per_20ms_frame": round(cpu_s / max(frames, 1) * 1e6, 2),
    }


def run(seed: int = 0, silero: bool = True) -> dict[str, Any]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError(
            "espeak-ng not found on PATH; bench vad synthesises its labelled speech with it "
            "(Debian/Ubuntu: apt-get install espeak-ng)"
        )
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    speech = _speech(exe)
    detectors: dict[str, Callable[[], Detector]] = {"energy": _energy_detector}
    silero_make = _silero_factory() if silero else None
    result: dict[str, Any] = {
        "espeak_ng": exe,
        "utterances": len(speech),
        "voices": list(VOICES),
        "noises": list(NOISES),
        "goal": "onset_delay_ms.p90 <= 150 at 20 dB SNR",
        "silero": "measured" if silero_make else (
            "silero-vad not importable: not measured" if silero else "skipped (--no-silero)"),
        "energy_settings": {"threshold_db": 9.0, "hangover_ms": 300, "step_ms": 10},
    }
    if silero_make:
        detectors["silero"] = silero_make
    per_snr: dict[str, Any] = {}
    for snr in SNRS_DB:
        by_noise: dict[str, Any] = {}
        for kind in NOISES:
            trials = []
            for clean in speech:
                on, off, p_speech = _labels(clean)
                level = 10 ** (rng.uniform(-30, -18) / 20) / np.sqrt(p_speech)
                lead = int(rng.uniform(1.0, 2.5) * SR)
                n = lead + len(clean) + SR
                gain = np.sqrt(p_speech * level**2 / 10 ** (snr / 10))
                mix = _noise(kind, n, rng, speech) * gain
                mix[lead : lead + len(clean)] += clean * level
                pcm = np.clip(np.rint(mix * 32768), -32768, 32767).astype(np.int16)
                pcm = g711.decode(g711.encode(pcm, "mulaw"), "mulaw")
                lead_ms = lead * 1000 / SR
                trials.append((pcm, lead_ms + on, lead_ms + off))
            by_noise[kind] = {name: _evaluate(make, trials) for name, make in detectors.items()}
        per_snr[f"{snr:g}dB"] = by_noise
    result["results"] = per_snr
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return result


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench vad", __doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-silero", action="store_true", help="measure the energy VAD only")
    p.add_argument("--indent", type=int, default=2)
    args = p.parse_args(argv)
    try:
        result = run(seed=args.seed, silero=not args.no_silero)
    except FileNotFoundError as e:
        sys.stderr.write(f"bench vad: {e}\n")
        return 2
    sys.stdout.write(json.dumps(result, indent=args.indent or None) + "\n")
    return 0

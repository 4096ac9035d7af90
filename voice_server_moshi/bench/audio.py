"""``voice-server-moshi bench audio``: the telephony audio path, measured, as JSON.

Per direction (8k->24k up, 24k->8k down), fed in 20 ms chunks: added latency, passband
ripple over 300-3400 Hz, image/alias rejection from 4.6 kHz, and CPU per 20 ms frame, for
this project's resampler and for ``soxr.ResampleStream`` at HQ and VHQ in the same run.
Then CPU per frame of G.711, Opus (sphn) and the caller VAD, and the Opus codec's delay.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._cli_help import command_parser
from ..audio import g711
from ..audio.measure import (
    SoxrStream,
    Stream,
    added_latency_ms,
    cpu_us_per_call,
    measure_resampler,
)
from ..audio.opus import OpusDecoder, OpusEncoder
from ..audio.resample import Resampler
from ..audio.vad import EnergyVad

GOALS = {
    "latency_ms_per_direction_max": 2.0,
    "round_trip_latency_ms_max": 6.0,
    "passband_ripple_db_max": 0.5,
    "rejection_db_min": 60.0,
}


def _machine() -> dict[str, Any]:
    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         model)
    except OSError:
        pass
    return {"python": platform.python_version(), "numpy": np.__version__, "cpu": model,
            "cpus": os.cpu_count()}


class _OpusLoop:
    """Opus encoder -> decoder as one 24 kHz stream, to measure what the codec adds."""

    def __init__(self, frame_samples: int) -> None:
        self.enc = OpusEncoder(24000, frame_samples)
        self.dec = OpusDecoder(24000)

    def process(self, samples: Any) -> Any:
        return self.dec.decode(self.enc.encode(samples))

    def flush(self) -> Any:
        return np.zeros(0, np.float32)


class _Replay:
    """Decodes recorded pages one per call; a decoder must see a stream from its first page
    (the headers), so it starts a fresh decoder at the end of the recording."""

    def __init__(self, pages: list[bytes]) -> None:
        self.pages, self.i, self.dec = pages, 0, OpusDecoder()

    def next(self) -> None:
        if self.i == len(self.pages):
            self.i, self.dec = 0, OpusDecoder()
        self.dec.decode(self.pages[self.i])
        self.i += 1


def _resamplers(in_rate: int, out_rate: int) -> dict[str, Callable[[], Stream]]:
    return {
        "ours": lambda: Resampler(in_rate, out_rate),
        "soxr_hq": lambda: SoxrStream(in_rate, out_rate, "HQ"),
        "soxr_vhq": lambda: SoxrStream(in_rate, out_rate, "VHQ"),
    }


def _cpu_resampler(make: Callable[[], Stream], in_rate: int, calls: int) -> float:
    stream = make()
    frame = (np.random.default_rng(1).standard_normal(in_rate // 50) * 0.1).astype(np.float32)
    return cpu_us_per_call(lambda: stream.process(frame), calls=calls)


def run(step_hz: float = 50.0, calls: int = 500) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "chunk_ms": 20,
        "goals": GOALS,
        "machine": _machine(),
    }
    directions = {"up_8k_to_24k": (8000, 24000), "down_24k_to_8k": (24000, 8000)}
    res: dict[str, Any] = {}
    for name, (a, b) in directions.items():
        row: dict[str, Any] = {}
        for impl, make in _resamplers(a, b).items():
            q = measure_resampler(make, a, b, step_hz=step_hz).as_dict()
            q["cpu_us_per_20ms_frame"] = round(_cpu_resampler(make, a, calls), 2)
            row[impl] = q
        r = Resampler(a, b)
        row["ours"]["design_latency_ms"] = round(r.latency_ms, 3)
        row["ours"]["taps"] = len(r.spec.taps)
        res[name] = row
    out["resampler"] = res
    out["round_trip_latency_ms"] = {
        impl: round(res["up_8k_to_24k"][impl]["latency_ms"]
                    + res["down_24k_to_8k"][impl]["latency_ms"], 3)
        for impl in ("ours", "soxr_hq", "soxr_vhq")
    }
    ours = [res[d]["ours"] for d in directions]
    out["goals_met"] = {
        "latency_per_direction": all(
            q["latency_ms"] <= GOALS["latency_ms_per_direction_max"] for q in ours),
        "round_trip_latency": out["round_trip_latency_ms"]["ours"]
        <= GOALS["round_trip_latency_ms_max"],
        "passband_ripple": all(
            q["passband_ripple_db"] <= GOALS["passband_ripple_db_max"] for q in ours),
        "rejection": all(q["rejection_db"] >= GOALS["rejection_db_min"] for q in ours),
    }

    rng = np.random.default_rng(2)
    pcm = (rng.standard_normal(160) * 3000).astype(np.int16)
    ulaw, alaw = g711.ulaw_encode(pcm), g711.alaw_encode(pcm)
    pcm_bytes = pcm.tobytes()
    out["g711_us_per_20ms_frame"] = {
        "mulaw_encode": round(cpu_us_per_call(lambda: g711.encode(pcm, "mulaw"), calls), 2),
        "mulaw_decode": round(cpu_us_per_call(lambda: g711.decode(ulaw, "mulaw"), calls), 2),
        "alaw_encode": round(cpu_us_per_call(lambda: g711.encode(pcm, "alaw"), calls), 2),
        "alaw_decode": round(cpu_us_per_call(lambda: g711.decode(alaw, "alaw"), calls), 2),
        "pcm16_decode": round(cpu_us_per_call(lambda: g711.decode(pcm_bytes, "pcm16"), calls), 2),
    }

    t = np.arange(1920 * 200) / 24000
    speechy = (0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
               + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    frames = [speechy[i : i + 1920] for i in range(0, len(speechy), 1920)]
    enc = OpusEncoder()
    it = iter(range(10**9))
    pages = [enc.encode(f) for f in frames]
    enc_us = cpu_us_per_call(lambda: enc.encode(frames[next(it) % len(frames)]),
                             calls=100, repeats=3)
    replay = _Replay(pages)
    dec_us = cpu_us_per_call(replay.next, calls=100, repeats=3)
    opus: dict[str, Any] = {
        "frame_samples": 1920,
        "encode_us_per_80ms_frame": round(enc_us, 1),
        "decode_us_per_80ms_frame": round(dec_us, 1),
        "bytes_per_80ms_frame_mean": round(float(np.mean([len(p) for p in pages[1:]])), 1),
    }
    for fs in (480, 960, 1920):
        lat = added_latency_ms(lambda fs=fs: _OpusLoop(fs), 24000, 24000)  # type: ignore[misc]
        opus[f"latency_ms_fed_20ms_frame_{fs}"] = {k: round(v, 3) for k, v in lat.items()}
    out["opus"] = opus

    vad = EnergyVad()
    noise = (rng.standard_normal(160) * 300).astype(np.int16)
    out["vad_us_per_20ms_frame"] = round(cpu_us_per_call(lambda: vad.process(noise), calls), 2)

    per_call = (res["up_8k_to_24k"]["ours"]["cpu_us_per_20ms_frame"]
                + res["down_24k_to_8k"]["ours"]["cpu_us_per_20ms_frame"]
                + out["g711_us_per_20ms_frame"]["mulaw_encode"]
                + out["g711_us_per_20ms_frame"]["mulaw_decode"]
                + out["vad_us_per_20ms_frame"]
                + (enc_us + dec_us) / 4)
    out["adapter_audio_us_per_20ms_frame"] = round(per_call, 1)
    out["calls_per_core_audio_path"] = round(20000.0 / per_call, 1)
    out["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench audio", __doc__)
    p.add_argument("--step-hz", type=float, default=50.0, help="tone grid spacing (Hz)")
    p.add_argument("--calls", type=int, default=500, help="timed calls per CPU figure")
    p.add_argument("--indent", type=int, default=2)
    args = p.parse_args(argv)
    result = run(step_hz=args.step_hz, calls=args.calls)
    sys.stdout.write(json.dumps(result, indent=args.indent or None) + "\n")
    return 0

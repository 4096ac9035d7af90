"""``bench codecs``: why the wire carries Opus and the GPU runs Mimi (ADR 0002), and
which Opus encoder ``serve`` uses (ADR 0165).

Times, per 80 ms frame on this machine's CPU: full-size Mimi streaming encode and decode
(random weights: the compute is the real model's), and Opus at 24 kHz through sphn, the
codec Kyutai's servers take on the wire. Then each Opus encoder this machine has (sphn,
and the system's libopus at ``serve``'s settings) on the same audio: the bundled corpus's
speech and white noise (what the dev checkpoint says), its CPU per frame, its bitrate, and
what a phone caller hears of the speech after Kyutai's reader decodes it: PESQ (ITU-T
P.862, narrowband at 8 kHz) where the ``pesq`` package is installed (the dev extra has it).
Needs the ``embedded`` extra for Mimi.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._cli_help import command_parser

FRAME = 1920  # 80 ms at 24 kHz


def _timeit(fn: Any, frames: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "realtime_fraction": round(float(a.mean()) / 80.0, 4),
    }


def bench_opus(frames: int) -> dict[str, Any]:
    import sphn

    rng = np.random.default_rng(0)
    # Speech-like load for the encoder: band-limited noise with an envelope.
    pcm = (0.1 * rng.standard_normal(FRAME * (frames + 10))).astype(np.float32)
    writer = sphn.OpusStreamWriter(24000)
    pages: list[bytes] = []
    idx = [0]

    def enc() -> None:
        i = idx[0] % (frames + 5)
        idx[0] += 1
        pages.append(writer.append_pcm(pcm[i * FRAME : (i + 1) * FRAME]))

    enc_ms = _timeit(enc, frames, 5)
    reader = sphn.OpusStreamReader(24000)
    it = iter(pages * 2)

    def dec() -> None:
        reader.append_bytes(next(it))

    dec_ms = _timeit(dec, frames, 5)
    return {"encode": _summary(enc_ms), "decode": _summary(dec_ms)}


def _corpus_speech() -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The bundled clips as the phone line had them (8 kHz) and at Moshi's 24 kHz."""
    import soxr

    from ..audio.wavio import read_wav
    from ..bundled import bundled_clip_dir

    clips = [read_wav(p) for p in sorted(bundled_clip_dir().glob("*.wav"))]
    line = np.concatenate([c.samples[:, 0] for c in clips if c.sample_rate == 8000])
    wide = soxr.resample(line, 8000, 24000).astype(np.float32)
    n = len(wide) // FRAME * FRAME
    return line[: n // 3], wide[:n]


def _decoded(stream: list[bytes], n: int) -> NDArray[np.float32]:
    from ..audio.opus import OpusDecoder

    dec = OpusDecoder(24000)
    y = np.concatenate([dec.decode(page) for page in stream])
    return np.pad(y, (0, max(0, n - len(y))))[:n]


def _delay(x: NDArray[np.float32], y: NDArray[np.float32], most: int) -> int:
    """The codec's delay in samples: the lag (up to ``most``) where ``y`` best matches ``x``."""
    core = x[: len(x) - most]
    return max(range(most), key=lambda d: float(np.dot(core, y[d:d + len(core)])))


def _pesq_nb(line: NDArray[np.float32], decoded_24k: NDArray[np.float32]) -> float | None:
    try:
        from pesq import pesq
    except ImportError:
        return None
    import soxr

    heard = soxr.resample(decoded_24k, 24000, 8000).astype(np.float32)
    d = _delay(line, heard, 160)  # 20 ms at 8 kHz; Opus's look-ahead is 6.5 ms
    n = min(len(line), len(heard) - d)
    return round(float(pesq(8000, line[:n], heard[d:d + n], "nb")), 3)


def _encode_ms(enc: Any, signal: NDArray[np.float32], frames: int) -> list[float]:
    chunks = itertools.cycle(signal[i:i + FRAME] for i in range(0, len(signal), FRAME))
    return _timeit(lambda: enc.encode(next(chunks)), frames, 5)


def bench_opus_encoders(frames: int) -> dict[str, Any]:
    """Every Opus encoder here on speech and on noise: CPU per frame, kbit/s, PESQ."""
    from ..audio.libopus import BITRATE_BPS, COMPLEXITY, libopus_version
    from ..audio.opus import OpusBackend, OpusEncoder, default_backend

    line, speech = _corpus_speech()
    noise = (0.1 * np.random.default_rng(0).standard_normal(len(speech))).astype(np.float32)
    backends: list[OpusBackend] = ["sphn"]
    if default_backend() == "libopus":
        backends.append("libopus")
    out: dict[str, Any] = {"serve_uses": default_backend(), "pesq": "narrowband, 8 kHz"}
    for backend in backends:
        row: dict[str, Any] = {}
        if backend == "libopus":
            row.update(version=libopus_version(), complexity=COMPLEXITY,
                       bitrate_bps=BITRATE_BPS, application="voip")
        for name, signal in (("speech", speech), ("noise", noise)):
            enc = OpusEncoder(24000, backend=backend)
            stream = [enc.encode(signal[i:i + FRAME]) for i in range(0, len(signal), FRAME)]
            row[name] = {
                "encode": _summary(_encode_ms(OpusEncoder(24000, backend=backend), signal,
                                              frames)),
                "kbps": round(sum(map(len, stream)) * 8 / (len(signal) / 24000) / 1000, 1),
            }
            if name == "speech":
                row[name]["pesq_nb"] = _pesq_nb(line, _decoded(stream, len(signal)))
        out[backend] = row
    return out


def bench_mimi(frames: int, threads: int | None) -> dict[str, Any]:
    import torch
    from moshi.models import loaders

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=8).eval()
    x = torch.randn(1, 1, FRAME) * 0.1
    with torch.no_grad(), mimi.streaming(1):
        codes = mimi.encode(x)
        enc_ms = _timeit(lambda: mimi.encode(x), frames, 2)
    with torch.no_grad(), mimi.streaming(1):
        dec_ms = _timeit(lambda: mimi.decode(codes), frames, 2)
    return {
        "torch_threads": torch.get_num_threads(),
        "encode": _summary(enc_ms),
        "decode": _summary(dec_ms),
    }


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench codecs", __doc__)
    p.add_argument("--frames", type=int, default=25, help="timed 80 ms frames per codec")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default all)")
    p.add_argument("--skip-mimi", action="store_true", help="Opus only (no torch needed)")
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "codecs",
        "frame_ms": 80,
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine()},
        "opus_sphn_24k": bench_opus(args.frames),
        "opus_encoders": bench_opus_encoders(max(args.frames, 50)),
    }
    if not args.skip_mimi:
        result["mimi_full_size_cpu"] = bench_mimi(args.frames, args.threads)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0

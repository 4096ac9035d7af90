"""``bench codecs``: why the wire carries Opus and the GPU runs Mimi (ADR 0002).

Times, per 80 ms frame on this machine's CPU: full-size Mimi streaming encode and decode
(random weights: the compute is the real model's), and Opus at 24 kHz through sphn, the
codec Kyutai's servers take on the wire. Needs the ``embedded`` extra for Mimi.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

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
    }
    if not args.skip_mimi:
        result["mimi_full_size_cpu"] = bench_mimi(args.frames, args.threads)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0

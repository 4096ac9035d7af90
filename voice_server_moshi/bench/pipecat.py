"""``bench pipecat``: what running inside Pipecat adds, against the reference host, on one
call, in one run.

The same corpus call (8 kHz, real time) goes three ways, one after the other, through the
same ``moshi`` adapter and ``full-duplex`` mode on the same agent:

* ``reference``: the reference host's real-time loop (caller frames pushed half a frame
  ahead of the mode's ticks; agent frames taken from ``on_agent_audio``);
* ``pipeline``: a Pipecat pipeline run by ``WorkerRunner``
  (``CallerSource -> MoshiService -> FrameLog``), no network;
* ``twilio``: ``pipecat-twilio``'s app on loopback (uvicorn, Pipecat's FastAPI WebSocket
  transport and Twilio serializer, µ-law) driven by the Twilio-protocol client.

Per 20 ms frame k: **frames in to frames out** = wall time from caller frame k entering
the path to agent frame k leaving it (the mode consumes one caller frame and plays one agent
frame per tick, so frame k in and out belong to the same tick). **Added** = the part spent
in Pipecat: caller frame k entering the path -> reaching the mode (``push_caller_audio``),
plus the mode playing agent frame k -> it leaving the path; zero for the reference host by
construction. CPU: process CPU seconds per call second during each run (the agent's
included, the same in every path; the differences are the paths').

``--agent scripted`` (default) is the corpus's scripted agent (cheap and deterministic, so
the figures are the paths'); ``--agent dev`` is the embedded dev checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._cli_help import command_parser
from ..adapter import VoiceModelAdapter, VoiceModelConfig
from ..audio import g711
from ..formats import AudioFormat
from ..modes.clock import RealClock
from ..registry import load_registry
from .call_agent import add_call_args, bench_call

SKIP_FRAMES = 10  # the first 200 ms: connect and prebuffer, not the steady state


def _stats(xs: list[float]) -> dict[str, float | int | None]:
    a = np.asarray(xs[SKIP_FRAMES:], dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None}
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def _pairs(a: list[float], b: list[float]) -> list[float]:
    n = min(len(a), len(b))
    return [1000.0 * (b[k] - a[k]) for k in range(n)]


def _in_to_out(in_wall: list[float], out_wall: list[float], consumed: list[int]) -> list[float]:
    """Caller frame c in -> the agent frame played at the tick that consumed it, out.

    ``consumed[i]``: caller frames the mode had consumed when it played agent frame i (it
    consumes at most one per tick; ticks without caller media play but consume nothing).
    """
    out: list[float] = []
    prev = 0
    for i, c in enumerate(consumed):
        if c > prev and i < len(out_wall) and c - 1 < len(in_wall):
            out.append(1000.0 * (out_wall[i] - in_wall[c - 1]))
        prev = c
    return out


class _TimingHost:
    def __init__(self) -> None:
        self.out_wall: list[float] = []
        self.consumed: list[int] = []
        self.mode: Any = None

    def on_agent_audio(self, audio: bytes, t_ms: float) -> None:
        self.out_wall.append(time.perf_counter())
        self.consumed.append(int(self.mode.counters["caller_frames"]))

    def on_user_turn_started(self, t_ms: float, barge_in: bool) -> None: ...
    def on_user_turn_ended(self, t_ms: float) -> None: ...
    def on_agent_turn_started(self, t_ms: float) -> None: ...
    def on_agent_turn_ended(self, t_ms: float, interrupted: bool) -> None: ...
    def on_transcript(self, role: Any, text: str, final: bool, t_ms: float) -> None: ...
    def on_error(self, code: str, message: str, fatal: bool) -> None: ...
    def on_disconnected(self, reason: str, t_ms: float) -> None: ...


async def _reference(pcm: bytes, factory: Callable[[], VoiceModelAdapter]) -> dict[str, Any]:
    fmt = AudioFormat("pcm16", 8000, 20)
    host = _TimingHost()
    clock = RealClock(1.0)
    mode = load_registry().create_mode("full-duplex", {}, adapter=factory(), host=host,
                                       config=VoiceModelConfig(audio=fmt), clock=clock)
    host.mode = mode
    frames = [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]
    in_wall: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await mode.start()
    try:
        for k, frame in enumerate(frames):  # the reference host's real-time loop
            await clock.sleep_until((k + 0.5) * 0.02)
            in_wall.append(time.perf_counter())
            mode.push_caller_audio(frame)
        await clock.sleep_until((len(frames) + 2) * 0.02)
    finally:
        await mode.stop()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"frames_in_to_out": _stats(_in_to_out(in_wall, host.out_wall, host.consumed)),
            "added": _stats([0.0] * len(in_wall)),
            "cpu_s_per_call_s": round(cpu / (len(frames) * 0.02), 4), "wall_s": round(wall, 2)}


async def _pipeline(pcm: bytes, factory: Callable[[], VoiceModelAdapter]) -> dict[str, Any]:
    from pipecat.frames.frames import OutputAudioRawFrame

    from ..pipecat.harness import CallerSource, FrameLog, run_pipeline
    from ..pipecat.service import MoshiService

    svc = MoshiService(adapter_factory=factory)
    svc.record_timing = True
    src = CallerSource(pcm, 8000, ready=svc.ready, tail_ms=40, lead_s=0.01)
    sink = FrameLog()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await run_pipeline([src, svc, sink], in_rate=8000, out_rate=8000, timeout_s=600)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    out_wall = [f.wall for f in sink.of(OutputAudioRawFrame)]
    added = [a + b for a, b in zip(_pairs(src.sent_wall, svc.caller_in_wall),
                                   _pairs(svc.agent_out_wall, out_wall), strict=False)]
    return {"frames_in_to_out": _stats(_in_to_out(src.sent_wall, out_wall,
                                                  svc.agent_out_consumed)),
            "added": _stats(added),
            "caller_frames_dropped": svc.mode.counters["caller_dropped_frames"],
            "added_in": _stats(_pairs(src.sent_wall, svc.caller_in_wall)),
            "added_out": _stats(_pairs(svc.agent_out_wall, out_wall)),
            "cpu_s_per_call_s": round(cpu / (len(src.frames) * 0.02), 4),
            "wall_s": round(wall, 2)}


async def _twilio(pcm: bytes, factory: Callable[[], VoiceModelAdapter],
                  pipecat_pacing: bool) -> dict[str, Any]:
    from ..pipecat.service import MoshiService
    from ..pipecat.twilio import create_app
    from ..pipecat.twilio_cli import running_app
    from ..pipecat.twilio_client import play_twilio_call

    services: list[MoshiService] = []

    def seen(svc: MoshiService) -> None:
        svc.record_timing = True
        services.append(svc)

    # Loopback, this process's own client: no Twilio signature to check.
    app = create_app(adapter_factory=factory, prewarm=False, on_service=seen,
                     pipecat_pacing=pipecat_pacing, insecure_no_signature=True)
    mulaw = g711.encode(np.frombuffer(pcm, dtype=np.int16), "mulaw")
    async def model_ready() -> None:  # measure the call, not the pipeline's start-up
        for _ in range(12000):  # the server creates the call's service on `start`
            if services:
                break
            await asyncio.sleep(0.005)
        await services[0].ready.wait()

    async with running_app(app) as port:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = await play_twilio_call(f"ws://127.0.0.1:{port}/ws", mulaw,
                                     before_media=model_ready)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    (svc,) = services
    # One agent media message per mode frame (20 ms, 160 bytes µ-law).
    out_wall = [w for w, _, n in res.media if n == 160]
    added = [a + b for a, b in zip(_pairs(res.sent_wall, svc.caller_in_wall),
                                   _pairs(svc.agent_out_wall, out_wall), strict=False)]
    before_stop = sum(n for _, p, n in res.media if p <= res.call_ms + 100) / 8.0
    return {"frames_in_to_out": _stats(_in_to_out(res.sent_wall, out_wall,
                                                  svc.agent_out_consumed)),
            "added": _stats(added),
            "caller_frames_dropped": svc.mode.counters["caller_dropped_frames"],
            "added_in": _stats(_pairs(res.sent_wall, svc.caller_in_wall)),
            "added_out": _stats(_pairs(svc.agent_out_wall, out_wall)),
            "cpu_s_per_call_s": round(cpu / (res.call_ms / 1000.0), 4),
            "media_coverage": round(res.media_ms / res.call_ms, 3),
            "media_coverage_before_stop": round(before_stop / res.call_ms, 3),
            "clears": len(res.clears), "close_code": res.close_code,
            "wall_s": round(wall, 2)}


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench pipecat", __doc__)
    add_call_args(p)
    p.add_argument("--pipecat-pacing", action="store_true",
                   help="also run the Twilio path with Pipecat's own output pacing")
    args = p.parse_args(argv)
    try:
        import pipecat  # noqa: F401
    except ImportError as exc:
        sys.stderr.write(f"error: needs the pipecat extra: {exc}\n")
        return 2
    pcm, call_s, factory = bench_call(args.seed, args.seconds, args.agent)

    async def run() -> dict[str, Any]:
        # Warm-up (imports, registry, first-use set-up, the engine): one short call each
        # way, discarded, so that no path pays for running first.
        warm = pcm[: 8000 * 2 * 2]
        await _reference(warm, factory)
        await _pipeline(warm, factory)
        await _twilio(warm, factory, False)
        out: dict[str, Any] = {
            "reference": await _reference(pcm, factory),
            "pipeline": await _pipeline(pcm, factory),
            "twilio": await _twilio(pcm, factory, False),
        }
        if args.pipecat_pacing:
            out["twilio_pipecat_pacing"] = await _twilio(pcm, factory, True)
        return out

    t0 = time.perf_counter()
    paths = asyncio.run(run())
    ref = paths["reference"]
    summary = {
        name: {
            "added_p50_ms": r["added"]["p50_ms"], "added_p99_ms": r["added"]["p99_ms"],
            "frames_in_to_out_p50_delta_ms": _delta(r, ref, "p50_ms"),
            "frames_in_to_out_p99_delta_ms": _delta(r, ref, "p99_ms"),
            "cpu_s_per_call_s_delta": round(r["cpu_s_per_call_s"] - ref["cpu_s_per_call_s"], 4),
        }
        for name, r in paths.items() if name != "reference"
    }
    import pipecat as pc

    result = {
        "bench": "pipecat", "agent": args.agent, "call_s": round(call_s, 2),
        "seed": args.seed, "pipecat": getattr(pc, "__version__", "?"),
        "machine": {"python": platform.python_version(), "cpus": _cpus(),
                    "load_avg_1m": round(_load(), 2)},
        "summary_vs_reference": summary, "paths": paths,
        "total_wall_s": round(time.perf_counter() - t0, 1),
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def _delta(r: dict[str, Any], ref: dict[str, Any], key: str) -> float | None:
    a, b = r["frames_in_to_out"][key], ref["frames_in_to_out"][key]
    return None if a is None or b is None else round(a - b, 2)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _load() -> float:
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

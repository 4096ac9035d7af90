"""``bench livekit``: what running inside LiveKit Agents adds, against the reference host,
on one call, in one run (like ``bench pipecat``, whose reference path and statistics it
reuses).

The same corpus call (8 kHz, real time) goes two ways through the same ``moshi`` adapter and
``full-duplex`` mode on the same agent:

* ``reference``: the reference host's real-time loop;
* ``agent_session``: LiveKit's ``AgentSession`` with ``voice_server_moshi.livekit.
  RealtimeModel`` (``between_turns="play"``: every agent frame from the first agent turn on
  goes through LiveKit's generation path), audio in from an in-process ``AudioInput`` at
  real time, out to a recording ``AudioOutput``; no room, no network.

**Added** per frame = caller frame k handed to LiveKit -> reaching the mode, plus the mode
playing an agent frame -> LiveKit handing it to the audio output. **Frames in to out** as in
``bench pipecat``. CPU: process CPU seconds per call second (agent included in both).
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from .._cli_help import command_parser
from ..adapter import VoiceModelAdapter
from .call_agent import add_call_args, bench_call
from .pipecat import _cpus, _in_to_out, _load, _pairs, _reference, _stats


async def _agent_session(pcm: bytes, factory: Callable[[], VoiceModelAdapter]
                         ) -> dict[str, Any]:
    from livekit.agents import Agent, AgentSession

    from ..livekit import RealtimeModel
    from ..livekit.harness import CallerInput, RecordingOutput
    from ..livekit.session import MoshiRealtimeSession

    model = RealtimeModel(adapter_factory=factory, sample_rate=8000, between_turns="play")
    session: AgentSession[Any] = AgentSession(llm=model)
    out = RecordingOutput()
    session.output.audio = out
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await session.start(agent=Agent(instructions=""))
    rt = session.current_agent._activity._rt_session  # type: ignore[union-attr]
    assert isinstance(rt, MoshiRealtimeSession)
    rt.record_timing = rt.feed.record_timing = True
    src = CallerInput(pcm, 8000, ready=rt.ready, tail_ms=40)
    session.input.audio = src
    await src.done.wait()
    await session.aclose()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    out_wall = [f.wall for f in out.frames]
    added_in = _pairs(src.sent_wall, rt.feed.in_wall)
    added_out = _pairs(rt.agent_out_wall, out_wall)
    consumed = rt.agent_out_consumed
    return {"frames_in_to_out": _stats(_in_to_out(src.sent_wall, out_wall, consumed)),
            "added": _stats([a + b for a, b in zip(added_in, added_out, strict=False)]),
            "added_in": _stats(added_in), "added_out": _stats(added_out),
            "caller_frames_dropped": rt.mode.counters["caller_dropped_frames"],
            "gap_fill_frames": rt.mode.counters["gap_fill_frames"],
            "forwarded_ms": round(out.played_ms), "dropped_ms": round(rt.dropped_ms),
            "cpu_s_per_call_s": round(cpu / (src.duration_ms / 1000.0), 4),
            "wall_s": round(wall, 2)}


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench livekit", __doc__)
    add_call_args(p)
    args = p.parse_args(argv)
    try:
        import livekit.agents as lk
    except ImportError as exc:
        sys.stderr.write(f"error: needs the livekit extra: {exc}\n")
        return 2
    pcm, call_s, factory = bench_call(args.seed, args.seconds, args.agent)

    async def run() -> dict[str, Any]:
        warm = pcm[: 8000 * 2 * 2]  # first-use costs paid once, by neither path
        await _reference(warm, factory)
        await _agent_session(warm, factory)
        return {"reference": await _reference(pcm, factory),
                "agent_session": await _agent_session(pcm, factory)}

    t0 = time.perf_counter()
    paths = asyncio.run(run())
    ref, lk_path = paths["reference"], paths["agent_session"]
    summary = {
        "added_p50_ms": lk_path["added"]["p50_ms"], "added_p99_ms": lk_path["added"]["p99_ms"],
        "cpu_s_per_call_s_delta": round(lk_path["cpu_s_per_call_s"] - ref["cpu_s_per_call_s"],
                                        4),
    }
    result = {
        "bench": "livekit", "agent": args.agent, "call_s": round(call_s, 2),
        "seed": args.seed, "livekit_agents": getattr(lk, "__version__", "?"),
        "machine": {"python": platform.python_version(), "cpus": _cpus(),
                    "load_avg_1m": round(_load(), 2), "shared": True},
        "summary_vs_reference": summary, "paths": paths,
        "total_wall_s": round(time.perf_counter() - t0, 1),
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0

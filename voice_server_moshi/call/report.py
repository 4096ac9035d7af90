"""What a call leaves behind: WAVs, the timeline, the latency report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.resample import Resampler
from ..audio.wavio import write_wav_pcm16
from ..formats import AudioFormat
from ..host.reference import CallResult
from ..moshi.transport import MOSHI_FRAME_MS, MOSHI_SAMPLE_RATE
from .caller import decode_call_audio


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": _pct(values, 50), "p90": _pct(values, 90),
            "p99": _pct(values, 99), "max": round(max(values), 1) if values else None}


def turn_latencies(result: CallResult) -> dict[str, list[float]]:
    """From the timeline: agent response after a caller turn, and detection delays."""
    cbs = [r for r in result.records if r.kind == "callback"]
    response: list[float] = []
    vad_start: list[float] = []
    vad_end: list[float] = []
    barge_in: list[float] = []
    for i, r in enumerate(cbs):
        if r.name == "user-turn-ended":
            vad_end.append(float(r.data["decided_ms"]) - r.t_ms)
            nxt = next((x for x in cbs[i + 1 :] if x.name in
                        ("agent-turn-started", "user-turn-started")), None)
            if nxt is not None and nxt.name == "agent-turn-started":
                response.append(nxt.t_ms - r.t_ms)
        elif r.name == "user-turn-started":
            delay = float(r.data["decided_ms"]) - r.t_ms
            (barge_in if r.data.get("barge_in") else vad_start).append(delay)
    return {"response": response, "vad_start": vad_start, "vad_end": vad_end,
            "barge_in": barge_in}


#: What the fields of ``latency.json`` that are not self-explanatory mean (written into it).
NOTES = {
    "virtual_clock_settle_timeouts": "virtual clock only: frame periods after which the model "
        "had not caught up with the caller audio within the settle timeout (10 s). 0 on a "
        "healthy run; more means the model was too slow and its audio is late in the "
        "timeline. Always 0 on the realtime clock.",
    "call_ms": "call time: the caller recording plus --tail-ms of silence, in ms",
    "wall_s": "how long the call took on this machine (the virtual clock runs as fast as "
        "the model answers)",
    "caller_vad_decision_delay_ms": "call ms from a caller turn's onset (or end) to when the "
        "mode reported it. 'start' counts user turns that were not barge-ins; a user turn "
        "that starts during agent speech is decided by the overlap rules instead, about "
        "1.1 s after its onset by design (ADR 0041), and counted under 'barge_in'. So "
        "'start' can have n: 0 although turns happened: every one was a barge-in.",
    "mode_counters.ignored_requests": "turn-based requests (commit_turn, create_response) "
        "that the reference host sends after each caller turn, as a turn-based voice-server "
        "would; the full-duplex mode accepts and ignores them (Moshi takes turns by itself)",
    "mode_counters.gap_fill_frames": "call frames with no caller media in time (the tail of "
        "silence after the recording counts here), sent to the model as silence",
    "mode_counters.caller_media": "the caller jitter buffer (ADR 0140): frames played, "
        "concealed (lost or late), held for, dropped late or twice, and the delay it added",
    "adapter_counters": "the Moshi adapter's counters; silence_frames and late_frames are in "
        "call frames, frames_sent and frames_received in 80 ms Moshi frames",
}


def latency_report(
    result: CallResult, fmt: AudioFormat, transport: str, response_wall_ms: list[float]
) -> dict[str, Any]:
    """Per stage, measured where measurable; ``designed`` values are the algorithm's own."""
    rin = Resampler(fmt.sample_rate, MOSHI_SAMPLE_RATE)
    rout = Resampler(MOSHI_SAMPLE_RATE, fmt.sample_rate)
    playout = result.mode_stats["playout"]
    turns = turn_latencies(result)
    algorithmic = (rin.latency_ms + MOSHI_FRAME_MS + rout.latency_ms + playout["mean_depth_ms"]
                   + result.mode_stats["caller_media"]["mean_delay_ms"])
    return {
        "transport": transport,
        "call_ms": result.call_ms,
        "wall_s": round(result.wall_s, 2),
        "realtime_factor": round(result.call_ms / 1000.0 / result.wall_s, 2)
        if result.wall_s else None,
        "virtual_clock_settle_timeouts": result.settle_timeouts,
        "notes": NOTES,
        "stages_ms": {
            "resampler_in": {"designed": round(rin.latency_ms, 2),
                             "note": f"{fmt.sample_rate}->{MOSHI_SAMPLE_RATE} Hz group delay"},
            "moshi_frame": {"designed": MOSHI_FRAME_MS,
                            "note": "caller audio is gathered into 80 ms frames"},
            "transport_and_engine_step": {
                **_stats(response_wall_ms),
                "note": "wall ms from sending caller media to receiving the agent audio of "
                        "the same stream position (Opus + network for remote, the engine "
                        "tick for embedded, plus up to one 20 ms call frame of slack)",
            },
            "resampler_out": {"designed": round(rout.latency_ms, 2),
                              "note": f"{MOSHI_SAMPLE_RATE}->{fmt.sample_rate} Hz group delay"},
            "playout_buffer": {
                "prebuffer": playout["prebuffer_ms"],
                "mean_depth": round(playout["mean_depth_ms"], 1),
                "max_depth": playout["max_depth_ms"],
                "underruns": playout["underruns"],
            },
        },
        "algorithmic_mouth_to_ear_ms": {
            "value": round(algorithmic, 1),
            "note": "resamplers + 80 ms frame + mean playout depth + the caller jitter "
                    "buffer's mean delay; add the engine step and "
                    "Moshi's own acoustic delay (80 ms for Moshi)",
        },
        "first_agent_audio_after_caller_turn_end_ms": _stats(turns["response"]),
        "caller_vad_decision_delay_ms": {"start": _stats(turns["vad_start"]),
                                         "end": _stats(turns["vad_end"]),
                                         "barge_in": _stats(turns["barge_in"])},
        "mode_counters": {k: v for k, v in result.mode_stats.items() if k != "playout"},
        "adapter_counters": result.adapter_counters,
    }


def write_outputs(
    out: Path, result: CallResult, fmt: AudioFormat, latency: dict[str, Any]
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    caller = decode_call_audio(result.caller_audio, fmt)
    agent = decode_call_audio(result.agent_audio, fmt)
    n = max(len(caller), len(agent))
    stereo = np.zeros((n, 2), dtype=np.float32)
    stereo[: len(caller), 0] = caller
    stereo[: len(agent), 1] = agent
    paths = {
        "agent": out / "agent.wav",
        "call": out / "call.wav",
        "timeline": out / "timeline.json",
        "latency": out / "latency.json",
    }
    write_wav_pcm16(paths["agent"], agent, fmt.sample_rate)
    write_wav_pcm16(paths["call"], stereo, fmt.sample_rate)
    paths["timeline"].write_text(json.dumps(result.timeline(), indent=1) + "\n", "utf-8")
    paths["latency"].write_text(json.dumps(latency, indent=1) + "\n", "utf-8")
    return paths

"""``voice-server-moshi bench turns``: the full-duplex mode's turn detection, measured.

The committed corpus (espeak-ng clips assembled with known timings, telephone band, noise
at each SNR) is played through the reference host, the real Moshi adapter (G.711,
resampling, framing, caller VAD) and the full-duplex mode, with the scripted agent standing
in for Moshi, on a virtual clock. Scores against the labels (see
:mod:`voice_server_moshi.corpus.evaluate`) and the issue's goals are printed as JSON.

``--sweep`` also varies ``max_backchannel_ms`` (ADR 0041). ``--playout`` runs one call on a
real-time clock with the scripted agent, the embedded engine or a server at ``--url``,
records when each agent frame arrives, and replays the arrivals through playout buffers of
several sizes (ADR 0042).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np

from .._cli_help import command_parser
from ..corpus.assemble import CorpusCall, standard_set
from ..corpus.evaluate import CallScore, score_call, summarize
from ..corpus.run import run_corpus_call
from ..corpus.store import bundled_clips
from ..host.impair import Impairment
from ..modes.playout import simulate
from ..modes.settings import FullDuplexSettings
from ..registry import load_registry

GOALS = {
    "onset_p90_ms_at_20db": 150.0,
    "backchannels_not_raised_ratio": 0.90,
    "barge_ins_raised_ratio": 0.95,
}


async def score_corpus(
    calls: list[CorpusCall], mode_settings: dict[str, Any] | None = None,
    impair: Impairment | None = None, vad: str = "energy", delayed: list[CallScore] | None = None,
) -> list[CallScore]:
    """Each call's score; ``delayed`` (if given) gets the scores in the caller's media time
    (:func:`score_call`'s ``to_media``: the delay the caller path added taken out)."""
    registry = load_registry()
    scores = []
    for call in calls:
        result = await run_corpus_call(call, mode_settings, registry=registry, impair=impair,
                                       vad=vad)
        scores.append(score_call(call, result.records))
        if delayed is not None:
            delayed.append(score_call(call, result.records, result.to_caller_media))
    return scores


def goals(by_snr: dict[str, dict[str, Any]]) -> dict[str, Any]:
    s20 = by_snr.get("20")
    if s20 is None:
        return {}
    p90 = s20["onset_abs_error_ms"]["p90"]
    bc = s20["backchannels_not_raised_ratio"]
    bi = s20["barge_ins_raised_ratio"]
    return {
        "onset_p90_ms_at_20db": {"value": p90, "goal": "<= 150",
                                 "met": p90 is not None and p90 <= 150.0},
        "backchannels_not_raised": {"value": bc, "goal": ">= 0.90",
                                    "met": bc is not None and bc >= 0.90},
        "barge_ins_raised": {"value": bi, "goal": ">= 0.95", "met": bi is not None and bi >= 0.95},
        "disconnected_exactly_once_no_callback_after": {
            "value": s20["disconnected_exactly_once"]
            and s20["callbacks_after_disconnected"] == 0,
            "goal": True,
            "met": s20["disconnected_exactly_once"] and s20["callbacks_after_disconnected"] == 0,
        },
    }


async def playout_measure(agent: str, seconds: float, prebuffers: list[int],
                          url: str | None = None) -> dict[str, Any]:
    """One real-time call; the agent frames' arrival times replayed through each buffer."""
    from ..corpus.assemble import build_call
    from ..host.config import HostConfig
    from ..host.reference import ReferenceHost

    call = build_call(bundled_clips(), 1, 20.0)
    n = int(seconds * 8000)
    call.caller, call.agent = call.caller[:n], call.agent[:n]
    frame_ms = 20.0
    if agent == "scripted":
        result = await run_corpus_call(call, clock="realtime", tail_ms=0.0)
    else:
        from ..audio import g711
        from ..audio.wavio import to_int16

        cfg = HostConfig()
        if agent == "remote":
            # A Kyutai-protocol server the user started (Opus + WebSocket), e.g. Kyutai's
            # moshi.server on the dev checkpoint: python -m voice_server_moshi.testing.moshi_server
            cfg = cfg.with_sections(adapter={"url": url})
        host = ReferenceHost(cfg)
        result = await host.run_call(g711.encode(to_int16(call.caller), "mulaw"),
                                     clock="realtime", tail_ms=0.0)
    arrivals = result.arrival_ms
    # Lateness of each 20 ms frame against its stream position, relative to the earliest:
    # what the buffer must absorb (includes the 60 ms a frame waits inside its 80 ms burst).
    lateness = np.array(arrivals) - np.arange(len(arrivals)) * frame_ms
    jitter = lateness - lateness.min() if lateness.size else lateness
    rows = []
    for pb in prebuffers:
        st = simulate(arrivals, frame_ms, pb)
        rows.append({
            "prebuffer_ms": pb, "underruns": st.underruns,
            "underruns_per_minute": round(st.underruns / (result.call_ms / 60000.0), 2),
            "mean_depth_ms": round(st.mean_depth_frames * frame_ms, 1),
        })
    return {
        "agent": agent,
        "call_ms": result.call_ms,
        "frames": len(arrivals),
        "frame_lateness_spread_ms": {
            "p50": round(float(np.percentile(jitter, 50)), 1),
            "p99": round(float(np.percentile(jitter, 99)), 1),
            "max": round(float(jitter.max()), 1),
        } if jitter.size else None,
        "response_wall_ms_p50": round(float(np.percentile(result.response_wall_ms, 50)), 1)
        if result.response_wall_ms else None,
        "by_prebuffer": rows,
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    snrs = [float(x) for x in args.snr.split(",")]
    clips = bundled_clips()
    calls = standard_set(clips, calls=args.calls, snrs=tuple(snrs))
    t0 = time.perf_counter()
    by_snr: dict[str, dict[str, Any]] = {}
    for snr in snrs:
        scores = await score_corpus([c for c in calls if c.snr_db == snr], vad=args.vad)
        by_snr[f"{snr:g}"] = summarize(scores)
    out: dict[str, Any] = {
        "bench": "turns",
        "corpus": {"clips": "bundled (voice_server_moshi/data/corpus/clips)",
                   "calls_per_snr": args.calls, "seeds": f"1..{args.calls}",
                   "audio_s": round(sum(c.duration_ms for c in calls) / 1000, 1)},
        "agent": "scripted (corpus/agent.py) through the real MoshiAdapter",
        "clock": "virtual",
        "vad": args.vad,
        "settings": dataclasses.asdict(FullDuplexSettings()),
        "by_snr_db": by_snr,
        "goals": goals(by_snr),
    }
    if args.sweep:
        base = [c for c in calls if c.snr_db == snrs[0]]
        rows = []
        for mb in (400, 600, 800, 1000, 1200):
            s = summarize(await score_corpus(base, {"max_backchannel_ms": mb}))
            rows.append({"max_backchannel_ms": mb,
                         "backchannels_not_raised_ratio": s["backchannels_not_raised_ratio"],
                         "barge_ins_raised_ratio": s["barge_ins_raised_ratio"],
                         "barge_in_decision_after_onset_ms": s["barge_in_decision_after_onset_ms"]})
        for loud in (6.0, 10.0):
            s = summarize(await score_corpus(base, {"loud_barge_in_db": loud}))
            rows.append({"loud_barge_in_db": loud,
                         "backchannels_not_raised_ratio": s["backchannels_not_raised_ratio"],
                         "barge_ins_raised_ratio": s["barge_ins_raised_ratio"],
                         "barge_in_decision_after_onset_ms": s["barge_in_decision_after_onset_ms"]})
        out["sweep_snr_db"] = snrs[0]
        out["sweep"] = rows
    if args.playout:
        out["playout"] = await playout_measure(
            args.playout, args.playout_seconds, [0, 20, 40, 60, 80, 100, 120, 160],
            url=args.url,
        )
    if args.impair:
        out["impaired"] = await impaired_runs(calls, snrs, Impairment.parse(args.impair),
                                              by_snr, args.vad)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


#: What a bad line may cost (issue 25): onsets and barge-ins within 2 points, no split.
IMPAIRED_GOAL_POINTS = 2.0


async def impaired_runs(calls: list[CorpusCall], snrs: list[float], impair: Impairment,
                        clean: dict[str, dict[str, Any]], vad: str) -> dict[str, Any]:
    """The same calls over ``impair``'s line, and the change from the clean line."""
    by_snr: dict[str, dict[str, Any]] = {}
    delta: dict[str, dict[str, Any]] = {}
    for snr in snrs:
        key = f"{snr:g}"
        delayed: list[CallScore] = []
        raw = summarize(await score_corpus([c for c in calls if c.snr_db == snr],
                                           impair=impair, vad=vad, delayed=delayed))
        s = summarize(delayed)
        by_snr[key] = {**s, "not_allowing_for_the_buffer_delay": raw}
        c = clean[key]
        delta[key] = {
            **_points(s, c),
            "split_barge_ins": s["split_barge_ins"], "split_turns": s["split_turns"],
            "not_allowing_for_the_buffer_delay": _points(raw, c),
        }
        delta[key]["met"] = (delta[key]["onsets_caught_points"] >= -IMPAIRED_GOAL_POINTS
                             and (delta[key]["barge_ins_raised_points"] or 0.0)
                             >= -IMPAIRED_GOAL_POINTS and s["split_barge_ins"] == 0)
    return {"impairment": impair.describe(), "by_snr_db": by_snr, "change": delta,
            "scoring": "user turns matched to the labels in the caller's media time (the "
            "line's and the jitter buffer's delay taken out, as measured by the buffer); "
            "the same in call time, delay included: not_allowing_for_the_buffer_delay"}


def _points(s: dict[str, Any], c: dict[str, Any]) -> dict[str, float | None]:
    """Change from the clean run ``c``, in percentage points."""
    bi = (None if s["barge_ins_raised_ratio"] is None or c["barge_ins_raised_ratio"] is None
          else round(100.0 * (s["barge_ins_raised_ratio"] - c["barge_ins_raised_ratio"]), 2))
    return {"onsets_caught_points": round(
        100.0 * (s["onsets_detected"] - c["onsets_detected"]) / max(1, c["onsets"]), 2),
        "barge_ins_raised_points": bi}


def _noisy_main(args: argparse.Namespace) -> int:
    from .noisy_turns import run_noisy, summary_table

    calls = args.calls
    snrs = tuple(float(x) for x in args.snr.split(","))
    out = asyncio.run(run_noisy(args.vads.split(","), calls, snrs))
    out["summary"] = summary_table(out)
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench turns", __doc__)
    p.add_argument("--calls", type=int, default=None,
                   help="corpus calls per SNR (default 12; with --noisy per kind and SNR, 3)")
    p.add_argument("--snr", default="20,10,5", help="SNRs in dB, comma separated; the goals "
                   "are checked at 20 (default 20,10,5)")
    p.add_argument("--sweep", action="store_true", help="also sweep the overlap thresholds")
    p.add_argument("--playout", choices=["scripted", "embedded", "remote"],
                   help="also measure agent-frame arrival jitter on a real-time call "
                   "(remote: the server at --url)")
    p.add_argument("--url", help="with --playout remote: a Kyutai-protocol server, e.g. Kyutai's "
                   "moshi.server on the dev checkpoint, started by 'python -m "
                   "voice_server_moshi.testing.moshi_server' (prints its URL)")
    p.add_argument("--playout-seconds", type=float, default=20.0)
    p.add_argument("--noisy", action="store_true",
                   help="instead: the caller VADs on the noisy corpus (babble, pink, brown, "
                   "street, music; noise-only and echo-only calls), ADR 0085; --calls is "
                   "then calls per kind and SNR (default 3)")
    p.add_argument("--vad", default="energy",
                   help="the caller VAD by registered name (default energy, the goals' "
                   "baseline; the adapter's default is cascade)")
    p.add_argument("--impair", metavar="SPEC",
                   help="also run the calls over a bad line and report the change, e.g. "
                   "jitter_ms=40,loss=0.02,seed=1 (names: see 'call --help')")
    p.add_argument("--vads", default="energy,silero,cascade",
                   help="with --noisy: the VADs to compare, by registered name")
    args = p.parse_args(argv)
    if args.playout == "remote" and not args.url:
        sys.stderr.write("error: --playout remote needs --url ws://HOST:PORT/api/chat\n")
        return 2
    if args.calls is None:
        args.calls = 3 if args.noisy else 12
    if args.calls < 1:
        sys.stderr.write("error: --calls must be >= 1\n")
        return 2
    try:
        [float(x) for x in args.snr.split(",")]
    except ValueError:
        sys.stderr.write(f"error: --snr must be numbers separated by commas, got {args.snr!r}\n")
        return 2
    if args.impair:
        try:
            Impairment.parse(args.impair)
        except ValueError as exc:
            sys.stderr.write(f"error: --impair: {exc}\n")
            return 2
    if args.noisy:
        return _noisy_main(args)
    out = asyncio.run(_main(args))
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    met = all(g["met"] for g in out["goals"].values())
    return 0 if met else 1

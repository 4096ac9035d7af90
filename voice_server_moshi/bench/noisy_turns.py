"""``bench turns --noisy``: caller VADs end to end on the noisy corpus (ADR 0085).

Each VAD runs in the same process on the same calls, through the reference host, the real
Moshi adapter (µ-law, resampling, the VAD fed caller audio and the agent's outgoing audio)
and the full-duplex mode, with the scripted agent, on a virtual clock:

* speech calls (:func:`~voice_server_moshi.corpus.noisy.noisy_set`) per background kind and
  SNR: sentence onsets caught (utterances and barge-ins opening a user turn), backchannels
  caught by the VAD (a start within the backchannel) and backchannels not raised as turns,
  barge-ins raised, onset error p50/p90 (reported onset minus labelled), false user turns;
* noise-only calls: user turns per minute (false starts);
* echo-only calls: barge-ins and user turns raised (should be none);
* the committed clean corpus (12 calls, 20 dB): onset p50/p90, to compare with ADR 0011;
* the second noisy corpus (:mod:`~voice_server_moshi.corpus.noisy_b`: other espeak-ng
  voices and rates, sox noise recipes, levels by P.56 active speech level), speech and
  noise-only calls, under ``corpus_b`` (skipped, with the reason, without espeak-ng or sox);
* CPU per call-second of each VAD alone (caller + echo reference, 20 ms chunks, thread time).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

from ..audio import g711
from ..audio.wavio import to_int16
from ..corpus.assemble import CorpusCall, standard_set
from ..corpus.clips import ToolMissingError
from ..corpus.evaluate import CallScore, score_call, summarize
from ..corpus.noise import NOISE_KINDS
from ..corpus.noisy import echo_set, noise_only_set, noisy_set
from ..corpus.noisy_b import KINDS as KINDS_B
from ..corpus.noisy_b import noise_only_set_b, noisy_set_b
from ..corpus.run import run_corpus_call
from ..corpus.store import bundled_clips
from ..registry import Registry, load_registry
from ..vads import AgentAudioSink, VadConfig

TARGETS = {
    "sentence_onsets_caught": ">= 0.90 overall",
    "sentence_onsets_caught_babble": ">= 0.60",
    "false_starts_per_min_noise_only": "<= 1.5",
    "onset_p90_ms": "<= 150",
    "backchannels_not_raised": ">= 0.90",
    "echo_only_barge_ins": "0",
}


def _vad_starts(records: Iterable[Any]) -> list[float]:
    return [float(r.data.get("stream_t_ms", r.t_ms)) for r in records
            if r.kind == "event" and r.name == "speech-started"]


async def _speech_rows(calls: list[CorpusCall], vad: str, registry: Registry
                       ) -> dict[str, Any]:
    scores: dict[str, list[CallScore]] = {}
    bc_caught: dict[str, list[int]] = {}
    for call in calls:
        res = await run_corpus_call(call, registry=registry, vad=vad)
        key = f"{call.background}/{call.snr_db:g}"
        scores.setdefault(key, []).append(score_call(call, res.records))
        starts = _vad_starts(res.records)
        bcs = [s for s in call.caller_segments if s.kind == "backchannel"]
        caught = sum(1 for s in bcs if any(s.start_ms - 100 <= t <= s.end_ms for t in starts))
        acc = bc_caught.setdefault(key, [0, 0])
        acc[0] += caught
        acc[1] += len(bcs)
    rows: dict[str, Any] = {}
    for key, sc in scores.items():
        rows[key] = _row(summarize(sc), bc_caught[key])
    for kind in {c.background for c in calls}:
        sel = [s for k, v in scores.items() if k.startswith(f"{kind}/") for s in v]
        bc = [sum(v[i] for k, v in bc_caught.items() if k.startswith(f"{kind}/"))
              for i in (0, 1)]
        rows[f"{kind}/all"] = _row(summarize(sel), bc)
    allsc = [s for v in scores.values() for s in v]
    rows["all"] = _row(summarize(allsc), [sum(v[i] for v in bc_caught.values()) for i in (0, 1)])
    return rows


def _row(s: dict[str, Any], bc_caught: list[int]) -> dict[str, Any]:
    return {
        "sentence_onsets": s["onsets"],
        "sentence_onsets_caught": s["onsets_detected"],
        "sentence_onsets_caught_ratio": round(s["onsets_detected"] / s["onsets"], 3)
        if s["onsets"] else None,
        "onset_abs_error_ms": s["onset_abs_error_ms"],
        "backchannels": s["backchannels"],
        "backchannels_caught_by_vad": bc_caught[0],
        "backchannels_not_raised_ratio": s["backchannels_not_raised_ratio"],
        "barge_ins": s["barge_ins"],
        "barge_ins_raised_ratio": s["barge_ins_raised_ratio"],
        "false_user_turns": s["false_user_turns"],
    }


async def _noise_rows(calls: list[CorpusCall], vad: str, registry: Registry) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    total_turns = total_min = 0.0
    for call in calls:
        res = await run_corpus_call(call, registry=registry, vad=vad)
        turns = sum(1 for r in res.records if r.kind == "callback"
                    and r.name == "user-turn-started")
        minutes = call.duration_ms / 60000
        rows[f"{call.background}/{call.snr_db:g}"] = round(turns / minutes, 2)
        total_turns += turns
        total_min += minutes
    for kind in {c.background for c in calls}:
        sel = [c for c in calls if c.background == kind]
        rows[f"{kind}/all"] = round(sum(rows[f"{kind}/{c.snr_db:g}"] * c.duration_ms / 60000
                                        for c in sel) / sum(c.duration_ms / 60000 for c in sel),
                                    2)
    rows["all"] = round(total_turns / total_min, 2)
    return rows


async def _echo_row(calls: list[CorpusCall], vad: str, registry: Registry) -> dict[str, Any]:
    barge = turns = vad_starts = 0
    for call in calls:
        res = await run_corpus_call(call, registry=registry, vad=vad)
        cbs = [r for r in res.records if r.kind == "callback" and r.name == "user-turn-started"]
        turns += len(cbs)
        barge += sum(1 for r in cbs if r.data.get("barge_in"))
        vad_starts += len(_vad_starts(res.records))
    return {"calls": len(calls), "barge_ins_raised": barge, "user_turns_raised": turns,
            "vad_starts": vad_starts}


def vad_cpu(vad: str, calls: list[CorpusCall], registry: Registry) -> dict[str, Any]:
    """CPU ms per call-second of the VAD alone: caller audio in 20 ms µ-law-decoded chunks
    and, for an echo-aware VAD, the agent track as the adapter sends it (80 ms later)."""
    factory = registry.vad_factory(vad)
    cpu = dur = 0.0
    windows = total_windows = 0
    for call in calls:
        v = factory(VadConfig(8000))
        sink = v if isinstance(v, AgentAudioSink) else None
        x = g711.decode(g711.encode(to_int16(call.caller), "mulaw"), "mulaw")
        ag = to_int16(call.agent)
        t0 = time.thread_time()
        for i in range(0, len(x) - 159, 160):
            if sink is not None and i >= 640:
                sink.agent_audio(ag[i - 640 : i - 480], (i - 640) / 8.0)
            v.process(x[i : i + 160])
        cpu += time.thread_time() - t0
        dur += len(x) / 8000
        windows += int(getattr(v, "windows_run", 0))
        total_windows += len(x) // 256
    out: dict[str, Any] = {"cpu_ms_per_call_second": round(1000 * cpu / dur, 3)}
    if vad == "cascade":
        out["silero_windows_run_ratio"] = round(windows / max(total_windows, 1), 4)
    return out


def _targets(r: dict[str, Any]) -> dict[str, Any]:
    a = r["speech"]["all"]
    bab = r["speech"].get("babble/all")
    p90 = a["onset_abs_error_ms"]["p90"]
    vals = {
        "sentence_onsets_caught": (a["sentence_onsets_caught_ratio"],
                                   (a["sentence_onsets_caught_ratio"] or 0) >= 0.90),
        "sentence_onsets_caught_babble": (
            bab["sentence_onsets_caught_ratio"] if bab else None,
            bab is not None and (bab["sentence_onsets_caught_ratio"] or 0) >= 0.60),
        "false_starts_per_min_noise_only": (r["noise_only_false_starts_per_min"]["all"],
                                            r["noise_only_false_starts_per_min"]["all"] <= 1.5),
        "onset_p90_ms": (p90, p90 is not None and p90 <= 150),
        "backchannels_not_raised": (a["backchannels_not_raised_ratio"],
                                    (a["backchannels_not_raised_ratio"] or 0) >= 0.90),
        "echo_only_barge_ins": (r["echo_only"]["barge_ins_raised"],
                                r["echo_only"]["barge_ins_raised"] == 0),
    }
    return {k: {"value": v, "target": TARGETS[k], "met": met} for k, (v, met) in vals.items()}


async def _corpus_b(vads: list[str], calls_per: int, snrs: tuple[float, ...],
                    noise_seconds: float, registry: Registry, t0: float) -> dict[str, Any]:
    """The second noisy corpus: speech rows and noise-only false starts per VAD."""
    try:
        speech = noisy_set_b(calls_per, snrs)
        noise = noise_only_set_b(snrs, seconds=noise_seconds)
    except ToolMissingError as exc:
        return {"skipped": str(exc)}
    out: dict[str, Any] = {
        "corpus": {"speech_calls": len(speech), "calls_per_kind_and_snr": calls_per,
                   "kinds": list(KINDS_B), "snrs_db": list(snrs),
                   "speech_audio_s": round(sum(c.duration_ms for c in speech) / 1000, 1),
                   "noise_only_calls": len(noise), "noise_only_s_each": noise_seconds},
        "vads": {},
    }
    for vad in vads:
        _progress(f"{vad}: corpus B, {len(speech)} speech, {len(noise)} noise-only calls", t0)
        out["vads"][vad] = {
            "speech": await _speech_rows(speech, vad, registry),
            "noise_only_false_starts_per_min": await _noise_rows(noise, vad, registry),
        }
    return out


async def run_noisy(vads: list[str], calls_per: int, snrs: tuple[float, ...],
                    kinds: tuple[str, ...] = NOISE_KINDS, echo_calls: int = 4,
                    noise_seconds: float = 20.0, corpus_b: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    registry = load_registry()
    clips = bundled_clips()
    speech = noisy_set(clips, calls_per, snrs, kinds)
    noise = noise_only_set(snrs, kinds, seconds=noise_seconds)
    echo = echo_set(clips, echo_calls)
    clean = standard_set(clips, calls=12, snrs=(20.0,))
    results: dict[str, Any] = {}
    for vad in vads:
        _progress(f"{vad}: {len(speech)} speech, {len(noise)} noise-only, {len(echo)} echo, "
                  f"{len(clean)} clean calls", t0)
        r: dict[str, Any] = {
            "speech": await _speech_rows(speech, vad, registry),
            "noise_only_false_starts_per_min": await _noise_rows(noise, vad, registry),
            "echo_only": await _echo_row(echo, vad, registry),
        }
        clean_s = summarize([score_call(c, (await run_corpus_call(
            c, registry=registry, vad=vad)).records) for c in clean])
        r["clean_20db_committed_corpus"] = {
            "onsets_detected": f"{clean_s['onsets_detected']}/{clean_s['onsets']}",
            "onset_abs_error_ms": clean_s["onset_abs_error_ms"],
            "backchannels_not_raised_ratio": clean_s["backchannels_not_raised_ratio"],
            "barge_ins_raised_ratio": clean_s["barge_ins_raised_ratio"],
        }
        r["cpu"] = vad_cpu(vad, speech + noise + echo, registry)
        _progress(f"{vad}: done", t0)
        r["targets"] = _targets(r)
        results[vad] = r
    return {
        "bench": "turns --noisy",
        "corpus_b": await _corpus_b(vads, calls_per, snrs, noise_seconds, registry, t0)
        if corpus_b else {"skipped": "not asked for"},
        "corpus": {
            "speech_calls": len(speech), "calls_per_kind_and_snr": calls_per,
            "kinds": list(kinds), "snrs_db": list(snrs),
            "speech_audio_s": round(sum(c.duration_ms for c in speech) / 1000, 1),
            "noise_only_calls": len(noise), "noise_only_s_each": noise_seconds,
            "echo_only_calls": len(echo),
            "echo": [c.echo for c in echo],
        },
        "path": "reference host -> MoshiAdapter (mu-law, VAD, echo reference) -> full-duplex "
                "mode; scripted agent; virtual clock",
        "vads": results,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _progress(msg: str, t0: float) -> None:
    sys.stderr.write(f"[bench turns --noisy {time.perf_counter() - t0:6.0f} s] {msg}\n")
    sys.stderr.flush()


def summary_table(out: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per VAD and corpus with the issue's headline figures."""
    rows = []
    b = out.get("corpus_b", {}).get("vads", {})
    for name, r in list(out["vads"].items()) + [(f"{k} (corpus B)", v) for k, v in b.items()]:
        a = r["speech"]["all"]
        bab = r["speech"].get("babble/all") or r["speech"].get("crowd/all", {})
        rows.append({
            "vad": name,
            "sentence_onsets": f"{a['sentence_onsets_caught']}/{a['sentence_onsets']}",
            "babble_or_crowd": f"{bab.get('sentence_onsets_caught')}/{bab.get('sentence_onsets')}",
            "backchannels_caught": f"{a['backchannels_caught_by_vad']}/{a['backchannels']}",
            "backchannels_not_raised": a["backchannels_not_raised_ratio"],
            "barge_ins_raised": a["barge_ins_raised_ratio"],
            "onset_p50_p90_ms": [a["onset_abs_error_ms"]["p50"], a["onset_abs_error_ms"]["p90"]],
            "false_starts_per_min": r["noise_only_false_starts_per_min"]["all"],
            "echo_barge_ins": r["echo_only"]["barge_ins_raised"] if "echo_only" in r else None,
            "cpu_ms_per_call_s": r["cpu"]["cpu_ms_per_call_second"] if "cpu" in r else None,
        })
    return rows


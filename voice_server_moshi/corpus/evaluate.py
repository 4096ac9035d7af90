"""Score a call's host callbacks against the corpus labels (the goals of the issue).

* onset: each labelled caller utterance or barge-in should open a user turn; the error is
  the reported onset minus the labelled one (goal: p90 of |error| <= 150 ms at 20 dB SNR);
* backchannel: no user turn may be raised from a labelled backchannel (goal: >= 90 %);
* barge-in: each labelled barge-in should raise a user turn with ``barge_in=True``
  (goal: >= 95 %);
* split: a labelled utterance or barge-in that opened more than one user turn (a late or
  lost caller frame heard as a pause splits it in two: the second half is then scored as a
  new turn, the barge-in decision restarted);
* lifecycle: exactly one ``disconnected``, and no callback after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..host.recorder import Record
from .assemble import CorpusCall

#: How far from a labelled onset a reported onset may fall and still be matched to it.
MATCH_BEFORE_MS = 300.0
MATCH_AFTER_MS = 600.0


@dataclass(slots=True)
class CallScore:
    call_id: str
    snr_db: float
    onset_errors_ms: list[float] = field(default_factory=list)
    onsets_missed: int = 0
    backchannels: int = 0
    backchannels_raised: int = 0
    barge_ins: int = 0
    barge_ins_raised: int = 0
    barge_in_decision_ms: list[float] = field(default_factory=list)
    false_turns: int = 0
    #: labelled utterances (barge-ins included) that opened more than one user turn
    split_turns: int = 0
    split_barge_ins: int = 0
    disconnected: int = 0
    callbacks_after_disconnect: int = 0


def score_call(call: CorpusCall, records: list[Record],
               to_media: Callable[[float], float] | None = None) -> CallScore:
    """``to_media``: call time -> the caller's media time (``CallResult.to_caller_media``):
    onsets are then matched in the caller's own time, so a line's delay (jitter buffer) is
    not scored as a miss; without it, in call time."""
    cbs = [r for r in records if r.kind == "callback"]
    if to_media is not None:
        cbs = [dataclasses.replace(r, t_ms=to_media(r.t_ms)) for r in cbs]
    starts = [r for r in cbs if r.name == "user-turn-started"]
    used: set[int] = set()
    sc = CallScore(call.call_id, call.snr_db)

    def match(onset: float, end: float | None = None) -> Record | None:
        hi = onset + MATCH_AFTER_MS if end is None else max(end, onset + MATCH_AFTER_MS)
        best = None
        for i, r in enumerate(starts):
            if i not in used and onset - MATCH_BEFORE_MS <= r.t_ms <= hi and (
                best is None or abs(r.t_ms - onset) < abs(best[1].t_ms - onset)
            ):
                best = (i, r)
        if best is None:
            return None
        used.add(best[0])
        return best[1]

    for seg in call.caller_segments:
        if seg.kind == "backchannel":
            sc.backchannels += 1
            if match(seg.start_ms, seg.end_ms) is not None:
                sc.backchannels_raised += 1
            continue
        r = match(seg.start_ms)
        inside = sum(1 for x in starts if seg.start_ms - MATCH_BEFORE_MS <= x.t_ms <= seg.end_ms)
        if inside > 1:
            sc.split_turns += 1
            sc.split_barge_ins += seg.kind == "barge-in"
        if r is None:
            sc.onsets_missed += 1
        else:
            sc.onset_errors_ms.append(r.t_ms - seg.start_ms)
        if seg.kind == "barge-in":
            sc.barge_ins += 1
            if r is not None and r.data.get("barge_in"):
                sc.barge_ins_raised += 1
                sc.barge_in_decision_ms.append(float(r.data["decided_ms"]) - seg.start_ms)
    sc.false_turns = len(starts) - len(used)
    names = [r.name for r in cbs]
    sc.disconnected = names.count("disconnected")
    if "disconnected" in names:
        sc.callbacks_after_disconnect = len(names) - 1 - names.index("disconnected")
    return sc


def summarize(scores: list[CallScore]) -> dict[str, Any]:
    """Totals and the goal checks over many calls (one SNR or all)."""
    errs = np.array([e for s in scores for e in s.onset_errors_ms], dtype=np.float64)
    labelled_onsets = sum(len(s.onset_errors_ms) + s.onsets_missed for s in scores)
    bc = sum(s.backchannels for s in scores)
    bc_raised = sum(s.backchannels_raised for s in scores)
    bi = sum(s.barge_ins for s in scores)
    bi_raised = sum(s.barge_ins_raised for s in scores)
    abs_err = np.abs(errs)
    return {
        "calls": len(scores),
        "onsets": labelled_onsets,
        "onsets_detected": int(errs.size),
        "onset_abs_error_ms": {
            "p50": round(float(np.percentile(abs_err, 50)), 1) if errs.size else None,
            "p90": round(float(np.percentile(abs_err, 90)), 1) if errs.size else None,
            "max": round(float(abs_err.max()), 1) if errs.size else None,
            "mean_signed": round(float(errs.mean()), 1) if errs.size else None,
        },
        "backchannels": bc,
        "backchannels_not_raised_ratio": round(1 - bc_raised / bc, 4) if bc else None,
        "barge_ins": bi,
        "barge_ins_raised_ratio": round(bi_raised / bi, 4) if bi else None,
        "barge_in_decision_after_onset_ms": {
            "p50": _pct([d for s in scores for d in s.barge_in_decision_ms], 50),
            "max": _pct([d for s in scores for d in s.barge_in_decision_ms], 100),
        },
        "false_user_turns": sum(s.false_turns for s in scores),
        "split_turns": sum(s.split_turns for s in scores),
        "split_barge_ins": sum(s.split_barge_ins for s in scores),
        "disconnected_exactly_once": all(s.disconnected == 1 for s in scores),
        "callbacks_after_disconnected": sum(s.callbacks_after_disconnect for s in scores),
    }


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None

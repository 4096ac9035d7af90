"""A picture of a call (matplotlib, Agg): both waveforms, turns, events and the transcript."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..host.recorder import Record
from ..host.reference import CallResult

_TURN_ROWS = [
    ("user-turn-started", "user turn start", "#2e7d32", "^"),
    ("user-turn-ended", "user turn end", "#2e7d32", "v"),
    ("barge-in", "barge-in", "#c62828", "X"),
    ("backchannel", "backchannel (ignored)", "#6a1b9a", "o"),
    ("agent-turn-started", "agent turn start", "#ef6c00", "^"),
    ("agent-turn-ended", "agent turn end", "#ef6c00", "v"),
    ("say-request", "say request (host)", "#1e88e5", ">"),
    ("error", "error", "#000000", "s"),
    ("disconnected", "disconnected", "#455a64", "D"),
]


def _envelope(x: npt.NDArray[np.float32], rate: int, block_ms: float = 10.0) -> tuple[
    npt.NDArray[np.float64], npt.NDArray[np.float32], npt.NDArray[np.float32]
]:
    b = max(1, int(rate * block_ms / 1000))
    n = len(x) // b * b
    blocks = x[:n].reshape(-1, b) if n else np.zeros((1, 1), np.float32)
    t = (np.arange(blocks.shape[0]) * b + b / 2) / rate
    return t, blocks.min(axis=1), blocks.max(axis=1)


def _spans(records: list[Record], start: str, end: str, call_s: float) -> list[
    tuple[float, float, Record]
]:
    out = []
    open_rec: Record | None = None
    for r in records:
        if r.name == start and open_rec is None:
            open_rec = r
        elif r.name == end and open_rec is not None:
            out.append((open_rec.t_ms / 1000, r.t_ms / 1000, open_rec))
            open_rec = None
    if open_rec is not None:
        out.append((open_rec.t_ms / 1000, call_s, open_rec))
    return out


def _phrases(records: list[Record], spans: list[tuple[float, float, Record]],
             gap_s: float = 1.0, role: str = "agent") -> list[tuple[float, float, str]]:
    """Final words of ``role`` grouped into phrases: one per turn of theirs (or per run of
    words without a gap longer than ``gap_s``, for words outside turns)."""
    words = [(r.t_ms / 1000, str(r.data.get("text", "")).strip()) for r in records
             if r.name == "transcript" and r.data.get("role") == role
             and r.data.get("final")]
    out: list[tuple[float, float, str]] = []
    for t, w in words:
        span = next(((s, e) for s, e, _ in spans if s - 0.5 <= t <= e + 0.5), None)
        if out and ((span is not None and span[0] <= out[-1][0] <= span[1] + 0.5)
                    or (span is None and t - out[-1][1] < gap_s)):
            out[-1] = (out[-1][0], t, f"{out[-1][2]} {w}")
        else:
            out.append((span[0] if span else t, t, w))
    return [p for p in out if p[2]]


def steered_spans(records: list[Record], call_s: float) -> list[tuple[float, float, str]]:
    """(start s, end s, text) of each say request the agent spoke: from its ``started`` to
    its ``finished`` or ``cancelled`` steering callback (ADR 0070)."""
    asks = [str(r.data.get("text", "")) for r in records if r.name == "say-request"]
    starts: dict[str, float] = {}
    out: list[tuple[float, float, str]] = []
    for r in records:
        if r.name != "agent-steering":
            continue
        rid, status = str(r.data.get("request_id")), r.data.get("status")
        if status == "started":
            starts[rid] = r.t_ms / 1000
        elif status in ("finished", "cancelled") and rid in starts:
            text = asks[len(out)] if len(out) < len(asks) else rid
            out.append((starts.pop(rid), r.t_ms / 1000, text))
    for rid, t0 in starts.items():
        out.append((t0, call_s, asks[len(out)] if len(out) < len(asks) else rid))
    return out


def plot_call(
    path: Path,
    result: CallResult,
    caller: npt.NDArray[np.float32],
    agent: npt.NDArray[np.float32],
    rate: int,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cbs = [r for r in result.records if r.kind == "callback"]
    call_s = result.call_ms / 1000
    fig, axes = plt.subplots(
        3, 1, figsize=(16, 8.5), sharex=True,
        gridspec_kw={"height_ratios": [3, 3, 2.2]}, constrained_layout=True,
    )
    ax_c, ax_a, ax_e = axes
    for ax, x, color, label in ((ax_c, caller, "#1565c0", "caller"),
                                (ax_a, agent, "#ef6c00", "agent")):
        te, lo, hi = _envelope(x, rate)
        ax.fill_between(te, lo, hi, color=color, linewidth=0, alpha=0.85)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(f"{label}\n(8 kHz track)" if rate == 8000 else label)
        ax.grid(axis="x", alpha=0.3)
    user_spans = _spans(cbs, "user-turn-started", "user-turn-ended", call_s)
    for s, e, rec in user_spans:
        barge = bool(rec.data.get("barge_in"))
        ax_c.axvspan(s, e, color="#c62828" if barge else "#2e7d32", alpha=0.16)
        ax_c.text(s, 0.93, "barge-in" if barge else "user turn", fontsize=8,
                  color="#c62828" if barge else "#2e7d32", va="top")
    for o in result.overlaps:
        if o.verdict == "backchannel" and o.end_ms is not None:
            ax_c.axvspan(o.onset_ms / 1000, o.end_ms / 1000, color="#6a1b9a", alpha=0.25)
            ax_c.text(o.onset_ms / 1000, -0.93, "backchannel", fontsize=8, color="#6a1b9a")
    agent_spans = _spans(cbs, "agent-turn-started", "agent-turn-ended", call_s)
    for s, e, _ in agent_spans:
        ax_a.axvspan(s, e, color="#ef6c00", alpha=0.14)
    for s, e, text in steered_spans(cbs, call_s):
        ax_a.axvspan(s, e, facecolor="none", edgecolor="#1e88e5", hatch="//", linewidth=0)
        ax_a.text(s, -0.97, f"steered: {text}"[:60], fontsize=8, color="#1e88e5",
                  va="bottom")
    # Wrap each phrase to about the width of its turn (~7 characters a second at 16 in).
    chars_per_s = 7.0 * 36.0 / max(call_s, 1.0)
    # Agent words in the agent's lane; caller words (an STT beside Moshi, ADR 0075), at
    # the time they arrived, in the caller's.
    for ax, phrases, y0, color in (
            (ax_a, _phrases(cbs, agent_spans), 0.97, "#4e342e"),
            (ax_c, _phrases(cbs, user_spans, role="caller"), 0.8, "#0d47a1")):
        for i, (t0, t1, txt) in enumerate(phrases):
            width = max(18, int((t1 - t0 + 0.8) * chars_per_s))
            # Near the right edge the box grows leftwards, so it stays inside the axes.
            right = t0 + width / chars_per_s > call_s
            ax.text(call_s if right else t0, y0 if i % 2 == 0 else -0.45,
                    textwrap.fill(txt, width), fontsize=7.5, va="top", color=color,
                    ha="right" if right else "left",
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
    events: dict[str, list[float]] = {name: [] for name, *_ in _TURN_ROWS}
    for r in cbs:
        if r.name in events:
            events[r.name].append(r.t_ms / 1000)
        if r.name == "user-turn-started" and r.data.get("barge_in"):
            events["barge-in"].append(float(r.data.get("decided_ms", r.t_ms)) / 1000)
    events["backchannel"] = [o.decided_ms / 1000 for o in result.overlaps
                             if o.verdict == "backchannel"]
    for row, (name, label, color, marker) in enumerate(_TURN_ROWS):
        y = len(_TURN_ROWS) - row
        ax_e.scatter(events[name], [y] * len(events[name]), color=color, marker=marker, s=42)
        ax_e.text(-0.01, y, label, transform=ax_e.get_yaxis_transform(), ha="right",
                  va="center", fontsize=8)
    ax_e.set_yticks([])
    ax_e.set_ylim(0.3, len(_TURN_ROWS) + 0.7)
    ax_e.set_xlabel("call time (s)  ·  barge-in and backchannel markers are at decision time")
    ax_e.grid(axis="x", alpha=0.3)
    ax_e.set_xlim(0, max(call_s, 1.0))
    ax_c.set_title(title, fontsize=11, loc="left")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe(result: CallResult) -> dict[str, Any]:
    cbs = [r for r in result.records if r.kind == "callback"]
    return {
        "user_turns": sum(r.name == "user-turn-started" for r in cbs),
        "barge_ins": sum(r.name == "user-turn-started" and bool(r.data.get("barge_in"))
                         for r in cbs),
        "backchannels": int(result.mode_stats.get("backchannels", 0)),
        "agent_turns": sum(r.name == "agent-turn-started" for r in cbs),
        "errors": sum(r.name == "error" for r in cbs),
        "caller_words": sum(r.name == "transcript" and r.data.get("role") == "caller"
                            and bool(r.data.get("final")) for r in cbs),
    }

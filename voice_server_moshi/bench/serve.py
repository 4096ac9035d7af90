"""``bench serve``: what ``serve`` adds around the model, at the live-call counts that matter.

For each slot count S (``--slots``) it starts the real ``serve --slots S`` and, for each
live-call count N <= S (``--calls``), drives N real-time Kyutai-protocol calls (Ogg/Opus
every 80 ms on an absolute clock, the clients of ``bench cluster``) for ``--seconds``, and
reads ``serve``'s own tick histogram from ``/metrics`` before and after: ``serve``'s mean
tick at that load. It reports per load:

* ``serve_tick_mean_ms``: the engine's tick inside ``serve`` (wall time, so it includes
  waiting for the interpreter while the event loop does Opus and the protocol);
* ``engine_tick_mean_ms``: ``bench engine``'s tick at the same S and N, measured in this
  process right after that load (ticks back to back, no server), and ``serve_over_engine``,
  the ratio; ``engine_paced_tick_mean_ms`` / ``serve_over_engine_paced``: the same engine
  ticking once per 80 ms (``bench engine --paced``) as a server does: on a CPU the core
  idles between ticks and comes back slow, which no server code avoids without burning the
  core (docs/engine-batching.md). Each load gets its own engine figures because a shared
  machine's speed drifts over minutes: a ratio is only fair between figures taken a few
  seconds apart;
* ``tick_breakdown_ms``: per tick, the tick thread's CPU time, its wait for a core (the
  kernel's run queue, ``/proc/.../schedstat``) and the rest of the tick's wall time
  (``blocked``: mostly waiting for the interpreter lock), the event-loop thread's CPU, and
  the ingress worker processes' CPU (0 without workers);
* ``serve_over_slots_n``: the tick against ``serve --slots N`` with the same N calls (when
  that slot count is measured too): what unused slots cost;
* ``engine_events``: what happened in the engine during the load: late ticks, caller
  frames trimmed from backlogs, full garbage collections and their milliseconds;
* ``realtime_calls``: calls that got their frames back (all but the first, and one that
  Opus's pre-skip can leave short) with a p99 lag <= 240 ms, the lag
  being the time from sending caller frame k+1 to receiving the agent frame it produced;
  ``lag_ms`` over every frame of every call.

``--ingress-workers K,...`` measures each layout in the same run (0: one process, the
event loop's Opus sharing the interpreter with the tick thread; K: Opus and the protocol
in K worker processes, :mod:`..server.workers`); each point names its ``ingress_workers``.

``--runs R`` repeats each load; ``summary`` gives, per load, the median, lowest and highest
``serve_over_engine`` over the runs and how many runs held every call in real time. The
client runs in this process, on the same machine. ``--warmup-seconds W`` drives each
``serve``'s largest call count for W seconds before its first load and discards it;
``--serve-log PATH`` keeps each ``serve``'s log (level info: calls, late ticks). Prints
one JSON object on stdout (``--out`` also writes it).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from .._cli_help import command_parser
from .cluster import _Call, _pct, _start, _stop
from .served import metric_values

LAG_LIMIT_MS = 240.0


def _sched(pid: int, thread: str) -> tuple[float, float]:
    """(CPU seconds, seconds waiting for a core) of ``pid``'s thread named ``thread``
    ("main": the process's first thread)."""
    cpu = wait = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            run, queued, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        if (thread == "main" and task.name == str(pid)) or comm == thread:
            cpu, wait = cpu + int(run) / 1e9, wait + int(queued) / 1e9
    return cpu, wait


def _children_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s child processes (the ingress workers), from /proc; not
    the SCHED_IDLE spinners of ``--keep-cores-awake``, which only fill idle time."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                if os.sched_getscheduler(int(kid)) == os.SCHED_IDLE:
                    continue
                fields = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _metrics(port: int) -> dict[str, float]:
    """``serve``'s /metrics page as ``{"name{labels}": value}``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return metric_values(r.read().decode())


def _tick_totals(port: int, vals: dict[str, float] | None = None) -> tuple[float, float]:
    """``serve``'s tick histogram (sum in seconds, count) from its /metrics (``vals``: a
    page already read)."""
    vals = _metrics(port) if vals is None else vals
    return vals["moshi_engine_tick_seconds_sum"], vals["moshi_engine_tick_seconds_count"]


#: Engine counters each load reports as a difference (``engine_events``): what makes a
#: call lose real time that the tick's mean hides (ADR 0150).
_EVENTS = {"late_ticks": "moshi_engine_late_ticks_total",
           "trimmed_frames": "moshi_engine_trimmed_frames_total",
           "gc_full_collections": 'moshi_process_gc_collections_total{generation="2"}',
           "gc_full_ms": 'moshi_process_gc_pause_seconds_total{generation="2"}'}


def _events(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Each :data:`_EVENTS` counter's change over a load (None: ``serve`` does not
    export it)."""
    out: dict[str, float | None] = {}
    for key, name in _EVENTS.items():
        if name not in after:
            out[key] = None
            continue
        delta = after[name] - before.get(name, 0.0)
        out[key] = round(1000 * delta, 3) if key.endswith("_ms") else int(delta)
    return out


async def _load(url: str, port: int, pid: int, calls: int, frames: int) -> dict[str, Any]:
    m0 = _metrics(port)
    s0, n0 = _tick_totals(port, m0)
    (t_cpu0, t_wait0), (m_cpu0, _) = _sched(pid, "moshi-engine"), _sched(pid, "main")
    w_cpu0 = _children_cpu(pid)
    cs = [_Call(url) for _ in range(calls)]
    await asyncio.gather(*(c.run(frames) for c in cs))
    m1 = _metrics(port)
    s1, n1 = _tick_totals(port, m1)
    (t_cpu1, t_wait1), (m_cpu1, _) = _sched(pid, "moshi-engine"), _sched(pid, "main")
    w_cpu1 = _children_cpu(pid)
    ticks = max(1.0, n1 - n0)
    cpu, wait = 1000 * (t_cpu1 - t_cpu0) / ticks, 1000 * (t_wait1 - t_wait0) / ticks
    mean = 1000 * (s1 - s0) / ticks
    lags = [lat for c in cs for lat in c.latencies_ms()]
    # Moshi's first frame yields nothing and Opus's pre-skip can leave the last one short.
    good = sum(1 for c in cs if not c.error and c.got and len(c.got) >= len(c.sent) - 2
               and float(np.percentile(c.latencies_ms(), 99)) <= LAG_LIMIT_MS)
    return {
        "serve_ticks": int(n1 - n0),
        "serve_tick_mean_ms": round(mean, 3) if n1 > n0 else None,
        "tick_breakdown_ms": {"cpu": round(cpu, 3), "waiting_for_a_core": round(wait, 3),
                              "blocked": round(max(0.0, mean - cpu - wait), 3),
                              "event_loop_cpu": round(1000 * (m_cpu1 - m_cpu0) / ticks, 3),
                              "ingress_workers_cpu": round(1000 * (w_cpu1 - w_cpu0) / ticks, 3)},
        "realtime_calls": good,
        "engine_events": _events(m0, m1),
        "lag_ms": {"p50": _pct(lags, 50), "p99": _pct(lags, 99),
                   "max": round(max(lags), 1) if lags else None},
        "frames_sent": sum(len(c.sent) for c in cs),
        "frames_received": sum(len(c.got) for c in cs),
        "errors": [c.error for c in cs if c.error],
    }


async def _warm(url: str, calls: int, frames: int) -> None:
    """A discarded load: ``serve``'s first calls, before any is measured."""
    await asyncio.gather(*(_Call(url).run(frames) for _ in range(calls)))


class _EngineAnchor:
    """``bench engine``'s figures for one (slots, live calls), back to back and paced at
    80 ms; models loaded once, on first use (after ``serve`` has loaded its own)."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.models: Any = None

    def measure(self, slots: int, calls: int) -> dict[str, Any]:
        from ..engine.models import load_models
        from .engine import measure

        if self.models is None:
            self.models = load_models(self.args.checkpoint, device=self.args.device,
                                      dtype="auto")
        e, ep = (measure(self.models, slots, self.args.seconds, 120.0, 1, calls, paced=paced)
                 for paced in (False, True))
        return {"engine_tick_mean_ms": e["tick_mean_ms"],
                "engine_tick_cpu_p50_ms": e["tick_cpu_p50_ms"],
                "engine_paced_tick_mean_ms": ep["tick_mean_ms"]}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _summary(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per load (layout, slots, calls): serve_over_engine over the runs, and the runs that
    held every call in real time."""
    loads = sorted({(q["ingress_workers"], q["slots"], q["calls"]) for q in points})
    out = []
    for k, s, n in loads:
        runs = [q for q in points if (q["ingress_workers"], q["slots"], q["calls"]) == (k, s, n)]
        ratios = [q["serve_over_engine"] for q in runs if q["serve_over_engine"] is not None]
        out.append({"ingress_workers": k, "slots": s, "calls": n, "runs": len(runs),
                    "serve_over_engine_median": (round(float(np.median(ratios)), 3)
                                                 if ratios else None),
                    "serve_over_engine_min": min(ratios, default=None),
                    "serve_over_engine_max": max(ratios, default=None),
                    "runs_all_realtime": sum(q["realtime_calls"] == n for q in runs)})
    return out


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench serve", __doc__)
    p.add_argument("--slots", default="16", help="comma-separated slot counts")
    p.add_argument("--calls", default="1,16", help="comma-separated live-call counts")
    p.add_argument("--checkpoint", default="dev")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=10.0, help="audio per call")
    p.add_argument("--runs", type=int, default=1, help="drives per load")
    p.add_argument("--ingress-workers", default="0",
                   help="comma-separated worker counts, each a serve layout (0: one process)")
    p.add_argument("--keep-cores-awake", action="store_true",
                   help="run serve with --keep-cores-awake (its spinners also run during "
                   "each load's engine anchor, which is measured while serve is up)")
    p.add_argument("--warmup-seconds", type=float, default=0.0,
                   help="before each serve's first load, drive its largest call count for "
                   "this long and discard it (default 0: the first load is a cold one)")
    p.add_argument("--serve-log", default=None, metavar="PATH",
                   help="append each serve's log (its stderr, at level info) to PATH: "
                   "calls opening and closing, ticks behind schedule (default: discarded)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        slot_counts = sorted({int(x) for x in args.slots.split(",") if x.strip()})
        call_counts = sorted({int(x) for x in args.calls.split(",") if x.strip()})
        layouts = sorted({int(x) for x in args.ingress_workers.split(",") if x.strip()})
    except ValueError:
        p.error("--slots, --calls and --ingress-workers are comma-separated integers")
    if not layouts or min(layouts) < 0:
        p.error("--ingress-workers needs values >= 0")
    if not slot_counts or not call_counts or min(slot_counts + call_counts) < 1:
        p.error("--slots and --calls need values >= 1")
    frames = max(10, round(args.seconds / 0.08))
    cli = [sys.executable, "-m", "voice_server_moshi.cli"]
    if args.serve_log:  # calls opening and closing, with their times, beside the warnings
        cli += ["--log-level", "info"]
    common = ["--checkpoint", args.checkpoint, "--device", args.device, "--port", "0",
              "--no-input-timeout-s", "0"]
    if args.keep_cores_awake:
        common.append("--keep-cores-awake")
    points: list[dict[str, Any]] = []
    anchor = _EngineAnchor(args)
    log_file = open(args.serve_log, "a") if args.serve_log else None  # noqa: SIM115
    try:
        for k in layouts:
            workers = ["--ingress-workers", str(k)] if k else []
            for s in slot_counts:
                proc, info = _start([*cli, "serve", "--slots", str(s), *workers, *common], 300,
                                    stderr=log_file or subprocess.DEVNULL)
                try:
                    loads = [n for n in call_counts if n <= s]
                    if args.warmup_seconds > 0 and loads:
                        asyncio.run(_warm(info["url"], max(loads),
                                          max(2, round(args.warmup_seconds / 0.08))))
                    for n in loads:
                        for run in range(args.runs):
                            got = asyncio.run(_load(info["url"], info["port"], proc.pid, n, frames))
                            # serve is idle now (no call): the anchor runs on the same machine,
                            # seconds after the load it is compared with.
                            points.append({"ingress_workers": k, "slots": s, "calls": n,
                                           "run": run + 1} | got | anchor.measure(s, n))
                finally:
                    _stop(proc)
    finally:
        if log_file is not None:
            log_file.close()
    for q in points:
        q["serve_over_engine"] = _ratio(q["serve_tick_mean_ms"], q["engine_tick_mean_ms"])
        q["serve_over_engine_paced"] = _ratio(q["serve_tick_mean_ms"],
                                              q["engine_paced_tick_mean_ms"])
        same = [r["serve_tick_mean_ms"] for r in points
                if r["slots"] == r["calls"] == q["calls"] and r["run"] == q["run"]
                and r["ingress_workers"] == q["ingress_workers"]]
        if same and q["slots"] != q["calls"]:
            q["serve_over_slots_n"] = _ratio(q["serve_tick_mean_ms"], same[0])
    result = {
        "bench": "serve", "checkpoint": args.checkpoint, "device": args.device,
        "seconds_per_call": args.seconds, "lag_limit_ms": LAG_LIMIT_MS,
        "keep_cores_awake": args.keep_cores_awake, "warmup_seconds": args.warmup_seconds,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "platform": platform.platform(),
                 "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "summary": _summary(points),
        "points": points,
    }
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0

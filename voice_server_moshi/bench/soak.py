"""``bench soak``: ``serve`` for ``--minutes`` with calls arriving and leaving at random at
``--load`` (three quarters) of its real-time capacity, sampled all along.

1. Capacity (unless ``--capacity N``): N = 1, 2, 3, 4, 6, 8, ... concurrent Kyutai-style
   calls (Ogg/Opus at 80 ms, real time) for ``--probe-s`` each, until one N is not served
   in real time (an engine frame dropped, a call answered under 97 % of its frames, or a
   call's lag p90 over 240 ms); capacity is the last N that was. This is the
   whole ``serve`` (Opus, protocol, engine) with the clients on the same host, so it is
   lower than ``bench engine``'s engine-only ``max_realtime_slots``.
2. Soak: calls arrive as a Poisson process at ``load * capacity / mean-call-s`` per second
   and last an exponential time (mean ``--mean-call-s``, 4 s to 3x the mean), so on
   average ``load * capacity`` calls are up (Little's law), on ``serve --slots capacity``.
3. Every ``--sample-s``: serve's resident memory, open file descriptors, threads, free
   slots, tick p99 (its ``/metrics`` histogram over the window: a bucket's upper edge,
   2000 for over 1 s), and the calls' lag p50/p99 (calls that lost no frame since they
   started: lag by frame index means nothing after a drop) and worst output gap.

Reports linear fits over the samples after the first minute (warm-up): memory in MB per
minute and lag in ms per minute, with ``drift`` true where the fitted rise over the run
is over 20 MB (and 2 %) for memory or 40 ms for lag (null: fewer than 10 samples, e.g. lag
on a host too busy for any call to go without a dropped frame). Prints JSON; ``--out`` writes it.
"""

from __future__ import annotations

import asyncio
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from .._cli_help import command_parser
from .cluster import _Call, _pct
from .fuzz import FRAME_S, _cpus, _drops, canary_figures
from .serve import LAG_LIMIT_MS
from .served import Served, add_common_flags, fit, tick_quantile, write_json

PROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: Fewer samples than this after the warm-up minute: no verdict on drift (null).
MIN_SAMPLES = 10


async def _probe(served: Served, n: int, seconds: float) -> dict[str, Any]:
    calls = [_Call(served.url) for _ in range(n)]
    before = await asyncio.to_thread(served.metrics)
    t0 = time.perf_counter()
    await asyncio.gather(*(c.run(int(seconds / FRAME_S)) for c in calls))
    t1 = time.perf_counter()
    dropped = _drops(await asyncio.to_thread(served.metrics)) - _drops(before)
    figs = [canary_figures(c, t0, t1) for c in calls]
    return {"calls": n, "engine_dropped_frames": dropped,
            "answered_share_min": min(f["answered_share"] or 0.0 for f in figs),
            "lag_ms_p90_max": max(f["lag_ms"]["p90"] or 1e9 for f in figs)}


async def measure_capacity(served: Served, seconds: float, max_calls: int) -> dict[str, Any]:
    """The most concurrent calls ``serve`` keeps in real time (0: not even one)."""
    points: list[dict[str, Any]] = []
    capacity = 0
    for n in (s for s in PROBE_STEPS if s <= max_calls):
        p = await _probe(served, n, seconds)
        await asyncio.to_thread(served.wait_free)
        points.append(p)
        # A fixed lag bound (bench serve's three frames, here on each call's p90), not one
        # relative to the first step's: a call's lag moves by up to a frame (80 ms) with
        # where its frames fall against the tick, call to call.
        if (p["engine_dropped_frames"] or p["answered_share_min"] < 0.97
                or p["lag_ms_p90_max"] > LAG_LIMIT_MS):
            break
        capacity = n
    return {"capacity": capacity, "points": points}


class Soak:
    def __init__(self, served: Served, target: float, mean_call_s: float, seed: int) -> None:
        self.served = served
        self.rate = target / mean_call_s
        self.mean_call_s = mean_call_s
        self.rng = random.Random(seed)
        self.calls: list[_Call] = []
        self.stop = asyncio.Event()
        self.started = 0
        #: When a sample saw engine frames dropped (any call's).
        self.drop_times: list[float] = []

    async def arrivals(self, until: float) -> None:
        tasks = []
        while time.perf_counter() < until:
            await asyncio.sleep(self.rng.expovariate(self.rate))
            length = min(max(self.rng.expovariate(1 / self.mean_call_s), 4.0),
                         3 * self.mean_call_s)
            call = _Call(self.served.url)
            self.calls.append(call)
            self.started += 1
            # A caller hangs up at once: a dropped frame's answer never comes, and waiting
            # for it would hold the slot idle.
            tasks.append(asyncio.create_task(call.run(int(length / FRAME_S), stop=self.stop,
                                                      answer_wait_s=1.0)))
        self.stop.set()
        await asyncio.gather(*tasks)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """The calls' figures between ``t0`` and ``t1``. Lag by frame index holds only for
        a call no frame of which may have been dropped: none since it started."""
        lags: list[float] = []
        gaps: list[float] = []
        active = 0
        for c in self.calls:
            if c.sent and c.sent[0] <= t1 and (c.closed_at is None or c.closed_at >= t0):
                active += 1
            f = canary_figures(c, t0, t1)
            if f["frames_answered"] > 1:
                gaps.append(f["output_gap_ms"]["p99"])
                if not any(c.sent[0] <= t <= t1 for t in self.drop_times):
                    lags += [lag for lag, t in zip(c.latencies_ms(), c.got, strict=False)
                             if t0 <= t <= t1]
        return {"calls_up": active, "lag_ms_p50": _pct(lags, 50), "lag_ms_p99": _pct(lags, 99),
                "output_gap_ms_p99_worst_call": max(gaps) if gaps else None}

    async def sample(self, every_s: float, t_start: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        last = await asyncio.to_thread(self.served.metrics)
        t_last = time.perf_counter()
        while not self.stop.is_set():
            await asyncio.sleep(every_s)
            now = time.perf_counter()
            m = await asyncio.to_thread(self.served.metrics)
            cap = await asyncio.to_thread(self.served.capacity)
            dropped = _drops(m) - _drops(last)
            if dropped:
                self.drop_times.append(now)
            out.append({"minute": round((now - t_start) / 60, 3),
                        **await asyncio.to_thread(self.served.stats),
                        "free_slots": cap["free_slots"],
                        "tick_ms_p99": tick_quantile(last, m, 0.99),
                        "dropped_frames": dropped, **self.window(t_last, now)})
            last, t_last = m, now
        return out


def drift(samples: list[dict[str, Any]], key: str, threshold: float,
          relative: float = 0.0) -> dict[str, Any]:
    """The fit of ``key`` over minutes after the first (warm-up), and whether it rose."""
    warm = [s for s in samples if s["minute"] >= 1.0 and s.get(key) is not None]
    f = fit([s["minute"] for s in warm], [float(s[key]) for s in warm])
    level = max((float(s[key]) for s in warm), default=0.0)
    rise = f["rise"]
    if rise is None or len(warm) < MIN_SAMPLES:
        return {**f, "per": "minute", "samples": len(warm), "drift": None}
    return {**f, "per": "minute", "samples": len(warm),
            "drift": bool(rise > max(threshold, relative * level))}


def run(args: Any) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="vsm-soak-"))
    common = ["--checkpoint", args.checkpoint, "--device", args.device]
    probe: dict[str, Any] = {"capacity": args.capacity, "points": [], "given": True}
    if args.capacity is None:
        served = Served(["--slots", str(args.max_calls), *common], log_dir / "probe.log")
        try:
            served.wait_ready()
            probe = asyncio.run(measure_capacity(served, args.probe_s, args.max_calls))
        finally:
            served.stop()
    capacity = max(1, int(probe["capacity"]))
    target = max(1.0, args.load * capacity)
    served = Served(["--slots", str(capacity), *common], log_dir / "serve.log")
    try:
        served.wait_ready()
        soak = Soak(served, target, args.mean_call_s, args.seed)
        before = served.stats()

        async def go() -> list[dict[str, Any]]:
            t0 = time.perf_counter()
            sampler = asyncio.create_task(soak.sample(args.sample_s, t0))
            await soak.arrivals(t0 + args.minutes * 60)
            return await sampler

        samples = asyncio.run(go())
        free = served.wait_free()
        time.sleep(1.0)
        after = {**served.stats(), "free_slots": free}
        closed = served.metrics()
    finally:
        stopped = served.stop()
    return {
        "benchmark": "soak", "platform": platform.platform(), "cpus": _cpus(),
        "checkpoint": args.checkpoint, "device": args.device, "minutes": args.minutes,
        "capacity": probe, "load": args.load, "target_calls_up": round(target, 2),
        "slots": capacity, "mean_call_s": args.mean_call_s, "calls_started": soak.started,
        "calls_refused_busy": int(closed.get("moshi_server_refused_busy_total", 0)),
        "before": before, "after": after,
        "leaks": {"fds": after["fds"] - before["fds"], "slots": capacity - after["free_slots"],
                  "threads": after["threads"] - before["threads"]},
        "drift": {"rss_mb": drift(samples, "rss_mb", 20.0, 0.02),
                  "lag_ms_p50": drift(samples, "lag_ms_p50", 40.0),
                  "tick_ms_p99": drift(samples, "tick_ms_p99", 40.0),
                  "fds": drift(samples, "fds", 5.0)},
        "crashes": {"exit_code_on_sigint": stopped["exit_code"],
                    "log_errors": stopped["log"]["errors"],
                    "log_error_lines": stopped["log"]["first"]},
        "samples": samples,
    }


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench soak", __doc__)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--capacity", type=int, default=None,
                   help="real-time calls serve holds here (default: measure it first)")
    p.add_argument("--load", type=float, default=0.75, help="share of capacity kept busy")
    p.add_argument("--mean-call-s", type=float, default=20.0)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--probe-s", type=float, default=8.0, help="length of each capacity step")
    p.add_argument("--max-calls", type=int, default=16, help="largest capacity step tried")
    add_common_flags(p, "benchmarks/results/soak.json")
    args = p.parse_args(argv)
    write_json(run(args), args.out)
    return 0

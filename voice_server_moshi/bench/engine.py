"""``bench engine``: how many concurrent real-time calls one batched engine holds.

For each slot count N it opens N simulated calls, then runs ticks back to back (one
80 ms frame per call per tick, no wall clock, so only the engine is measured) for
``--seconds`` of call audio, and reports tick p50/p99, the real-time margin (80 ms - p99),
and memory per slot. N is searched by doubling from 1 while p99 <= 80 ms, then bisecting
between the last N that held and the first that did not; ``max_realtime_slots`` is the
largest N that held. ``--profile`` adds a torch.profiler table of one tick (top ops).

``--stt NAME`` batches a Kyutai STT beside Moshi (caller transcripts, ADR 0075) and also
measures every slot count without it: ``stt.points`` has the added tick time and the STT's
memory per slot (``--stt full``: kyutai/stt-1b-en_fr's sizes, random weights, with
``--architecture full``).

``--architecture full`` builds the full-size Moshi 7B + Mimi with random weights (no
download; the compute and memory of the real model). That is a GPU measurement: on CPU
a tick takes seconds and the weights alone need ~16 GB of RAM in bfloat16.
Needs the ``embedded`` extra. Prints one JSON object on stdout.
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
from .._log import get_logger
from .engine_probes import stall_recovery

log = get_logger(__name__)

BUDGET_MS = 80.0


def _percentile(ms: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(ms), q)), 3)


def measure(models: Any, slots: int, seconds: float, max_wall_s: float,
            cpu_threads: int | None, active: int | None = None,
            live_rows_only: bool = True, paced: bool = False) -> dict[str, Any]:
    """Tick times with ``slots`` busy calls (``active``: that many, below ``slots``, reached
    by calls leaving a full engine, as on a server); ``paced``: one tick per 80 ms of wall
    clock, as a server runs them, instead of back to back (on a CPU a tick after a pause
    finds its caches cold); returns the point and hands models back."""
    import torch

    from ..engine.core import FRAME_SAMPLES, Engine, EngineConfig

    eng = Engine(models, EngineConfig(slots=slots, fill_after_ticks=None,
                                      cpu_threads=cpu_threads, live_rows_only=live_rows_only))
    t0 = time.perf_counter()
    eng.warm_up()
    warm_s = time.perf_counter() - t0
    calls = [eng.try_open(f"bench-{i}", lambda ev: None) for i in range(slots)]
    rng = np.random.default_rng(slots)
    # A few distinct speech-like frames, cycled: input content does not change the cost.
    frames = (0.1 * rng.standard_normal((8, FRAME_SAMPLES))).astype(np.float32)
    if active is not None and active < slots:
        for c in calls:
            c.push(frames[0])
        eng.tick()
        # The first calls leave: the live ones are moved down on the next tick (ADR 0135).
        for c in calls[:slots - active]:
            c.close()
        calls = calls[slots - active:]
    n_ticks = max(3, round(seconds * 1000.0 / BUDGET_MS))
    times: list[float] = []
    # CPU time of the ticking thread: on CPU with one intra-op thread it is the tick's work,
    # and unlike wall time it barely moves when other processes share the cores.
    cpu: list[float] = []
    depth_max = 0
    wall0 = next_t = time.perf_counter()
    for k in range(n_ticks):
        for c in calls:
            c.push(frames[k % len(frames)])
        depth_max = max(depth_max, *(dict(eng.metrics().input_depths).values()))
        t, tc = time.perf_counter(), time.thread_time()
        eng.tick()
        if eng.device.type == "cuda":
            torch.cuda.synchronize(eng.device)  # tick() already syncs on .cpu(); be sure
        times.append((time.perf_counter() - t) * 1000.0)
        cpu.append((time.thread_time() - tc) * 1000.0)
        if time.perf_counter() - wall0 > max_wall_s and k >= 2:
            break
        if paced:
            next_t += BUDGET_MS / 1000.0
            time.sleep(max(0.0, next_t - time.perf_counter()))
    recovery = stall_recovery(eng, calls, frames[0])
    m = eng.metrics()
    steady = times[1:] if len(times) > 2 else times  # the first tick of fresh rows resets
    p99 = _percentile(steady, 99)
    point = {
        "slots": slots,
        "active": len(calls),
        "paced": paced,
        "batch_width": eng._batch.width,
        "row_moves": eng.row_moves,
        "ticks": len(times),
        "tick_p50_ms": _percentile(steady, 50),
        "tick_p99_ms": p99,
        "tick_mean_ms": round(float(np.mean(steady)), 3),
        "tick_max_ms": round(float(np.max(steady)), 3),
        "tick_cpu_p50_ms": _percentile(cpu[1:] if len(cpu) > 2 else cpu, 50),
        "realtime_margin_ms": round(BUDGET_MS - p99, 3),
        "realtime": p99 <= BUDGET_MS,
        "per_call_p50_ms": round(_percentile(steady, 50) / len(calls), 4),
        "state_bytes_per_slot": m.state_bytes_per_slot,
        "device_memory_bytes": m.device_memory_bytes,
        "process_rss_bytes": m.process_rss_bytes,
        "warmup_s": round(warm_s, 3),
        # Per-call input queue (frames of 80 ms waiting for a tick) while fed in real time.
        "input_depth_max_frames": depth_max,
        "stall_recovery": recovery,
        "trimmed_frames": m.trimmed,
        "overrun_frames": m.overruns,
    }
    if eng.stt is not None:
        from ..engine.core import streaming_state_bytes

        point["stt_state_bytes_per_slot"] = streaming_state_bytes(
            eng.stt.lm_gen, eng.stt.models.lm) // slots
    for c in calls:
        c.close()
    eng.detach()
    log.info("bench point", **{k: v for k, v in point.items() if k != "realtime"})
    return point


def profile_tick(models: Any, slots: int, cpu_threads: int | None,
                 top: int = 15) -> dict[str, Any]:
    """torch.profiler over a few ticks at ``slots``: where a tick's time goes."""
    from torch.profiler import ProfilerActivity, profile

    from ..engine.core import FRAME_SAMPLES, Engine, EngineConfig

    eng = Engine(models, EngineConfig(slots=slots, fill_after_ticks=None,
                                      cpu_threads=cpu_threads))
    eng.warm_up()
    calls = [eng.try_open(f"prof-{i}", lambda ev: None) for i in range(slots)]
    frame = np.zeros(FRAME_SAMPLES, dtype=np.float32)
    for _ in range(3):  # past the joining ticks
        for c in calls:
            c.push(frame)
        eng.tick()
    acts = [ProfilerActivity.CPU]
    cuda = eng.device.type == "cuda"
    if cuda:
        acts.append(ProfilerActivity.CUDA)
    ticks = 3
    with profile(activities=acts) as prof:
        for _ in range(ticks):
            for c in calls:
                c.push(frame)
            eng.tick()
    sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: float(getattr(e, sort_key, 0.0)),
                    reverse=True)
    rows = []
    for e in events[:top]:
        row = {
            "op": e.key,
            "calls_per_tick": round(e.count / ticks, 2),
            "self_cpu_ms_per_tick": round(e.self_cpu_time_total / 1000.0 / ticks, 3),
            "cpu_total_ms_per_tick": round(e.cpu_time_total / 1000.0 / ticks, 3),
        }
        if cuda:
            row["self_cuda_ms_per_tick"] = round(
                getattr(e, "self_cuda_time_total", 0.0) / 1000.0 / ticks, 3)
        rows.append(row)
    total_self = sum(e.self_cpu_time_total for e in events) / 1000.0 / ticks
    for c in calls:
        c.close()
    eng.detach()
    return {"slots": slots, "ticks": ticks, "sorted_by": sort_key,
            "self_cpu_ms_per_tick_all_ops": round(total_self, 3), "top_ops": rows}


def stt_added(models: Any, points: list[dict[str, Any]], seconds: float,
              max_wall_s: float, cpu_threads: int | None) -> dict[str, Any]:
    """The same slot counts without the STT (and with Mimi back at Moshi's codebooks):
    what the STT adds to a tick, and its memory."""
    stt = models.stt
    models.stt = None
    models.mimi.set_num_codebooks(int(models.lm.n_q - models.lm.dep_q))
    try:
        rows = []
        for p in points:
            base = measure(models, p["slots"], seconds, max_wall_s, cpu_threads)
            rows.append({
                "slots": p["slots"],
                "tick_p50_ms_with_stt": p["tick_p50_ms"],
                "tick_p50_ms_without": base["tick_p50_ms"],
                "added_p50_ms": round(p["tick_p50_ms"] - base["tick_p50_ms"], 3),
                "tick_cpu_p50_ms_with_stt": p["tick_cpu_p50_ms"],
                "tick_cpu_p50_ms_without": base["tick_cpu_p50_ms"],
                "added_cpu_p50_ms": round(p["tick_cpu_p50_ms"] - base["tick_cpu_p50_ms"], 3),
                "tick_p99_ms_with_stt": p["tick_p99_ms"],
                "tick_p99_ms_without": base["tick_p99_ms"],
                "realtime_without": base["realtime"],
                "stt_state_bytes_per_slot": p.get("stt_state_bytes_per_slot"),
            })
    finally:
        models.stt = stt
    return {
        "model": stt.description,
        "codebooks": stt.codebooks,
        "audio_delay_s": stt.delay_s,
        "silence_prefix_s": stt.prefix_s,
        "weights_bytes": sum(p.numel() * p.element_size() for p in stt.lm.parameters()),
        "points": rows,
    }


def full_size_memory(context: int | None, dtype: str) -> dict[str, Any]:
    """Weights and per-slot streaming state of the full-size Moshi 7B + Mimi, sized on
    torch's meta device (no memory, no GPU), and how many slots fit on common GPUs."""
    import torch
    from moshi.models import loaders
    from moshi.models.lm import LMGen

    from ..engine.core import streaming_state_bytes
    from ..engine.models import resolve_dtype

    dt = resolve_dtype("bfloat16" if dtype == "auto" else dtype, torch.device("cuda"))
    overrides = {} if context is None else {"context": context}
    lm = loaders.get_moshi_lm(None, device="meta", dtype=dt, lm_kwargs_overrides=overrides)
    mimi = loaders.get_mimi(None, device="meta")
    gen = LMGen(lm, support_out_of_sync=True)
    n = 2
    with mimi.streaming(n), gen.streaming(n):
        per_slot = streaming_state_bytes(mimi, gen, lm) // n
    weights = sum(p.numel() * p.element_size() for m in (mimi, lm) for p in m.parameters())
    gib = 1024**3
    # 10 % of the card kept for activations, CUDA graphs, the allocator and the context.
    fits = {name: int((mem * gib * 0.9 - weights) // per_slot)
            for name, mem in (("H100-80GB", 80), ("H200-141GB", 141), ("L40S-48GB", 48))}
    return {"dtype": str(dt).removeprefix("torch."), "context": lm.context,
            "weights_bytes": weights, "state_bytes_per_slot": per_slot,
            "slots_fitting_by_memory": fits}


def search(models: Any, max_slots: int, seconds: float, max_wall_s: float,
           fixed: list[int] | None, cpu_threads: int | None,
           ) -> tuple[list[dict[str, Any]], int]:
    points: dict[int, dict[str, Any]] = {}

    def at(n: int) -> bool:
        if n not in points:
            points[n] = measure(models, n, seconds, max_wall_s, cpu_threads)
        return bool(points[n]["realtime"])

    if fixed:
        for n in fixed:
            at(n)
        good = [n for n in fixed if points[n]["realtime"]]
        return [points[n] for n in sorted(points)], max(good, default=0)
    lo, hi = 0, None
    n = 1
    while n <= max_slots:
        if at(n):
            lo = n
            n *= 2
        else:
            hi = n
            break
    if hi is None and lo < max_slots:
        # Doubling overshot max_slots while everything held: try max_slots itself.
        if at(max_slots):
            lo = max_slots
        else:
            hi = max_slots
    if hi is not None:
        while hi - lo > 1:  # bisect between the last that held and the first that did not
            mid = (lo + hi) // 2
            if at(mid):
                lo = mid
            else:
                hi = mid
    return [points[k] for k in sorted(points)], lo


def _counts(p: Any, text: str, flag: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        p.error(f"{flag} must be comma-separated integers, got {text!r}")
    if not out or out[0] < 1:
        p.error(f"{flag} values must be >= 1")
    return out


def main(argv: list[str]) -> int:
    p = command_parser(
        "voice-server-moshi bench engine",
        "Batched engine: tick p50/p99, real-time margin, memory per slot, and the "
        "largest slot count whose p99 tick stays under 80 ms. Prints JSON.",
    )
    p.add_argument("--checkpoint", default="dev", help="dev | DIR | HF repo")
    p.add_argument("--architecture", choices=["checkpoint", "full"], default="checkpoint",
                   help="full: full-size Moshi 7B + Mimi with random weights (no download)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--context", type=int, default=None,
                   help="LM context in steps (memory per slot); default the checkpoint's")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="simulated call audio per slot count (ticks = seconds / 0.08)")
    p.add_argument("--max-slots", type=int, default=64)
    p.add_argument("--slots", default=None,
                   help="comma-separated slot counts to measure instead of searching")
    p.add_argument("--active", default=None,
                   help="comma-separated live-call counts to measure in each --slots count "
                   "(e.g. --slots 32 --active 1,8,32): a tick should cost the live calls")
    p.add_argument("--fixed-batch", action="store_true",
                   help="with --active: step every slot on every tick (the engine before "
                   "ADR 0135), for comparison")
    p.add_argument("--paced", action="store_true",
                   help="with --active: one tick per 80 ms, as a server runs them (default: "
                   "back to back, the best case)")
    p.add_argument("--max-wall-s", type=float, default=60.0,
                   help="stop a slot count's run after this much wall time")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch intra-op threads on CPU (default 1, the engine's default; "
                   "0 = leave torch's default)")
    p.add_argument("--stt", default=None,
                   help="batch a Kyutai STT beside Moshi (dev | DIR | HF repo | full) and "
                   "report the tick time it adds")
    p.add_argument("--equivalence", action="store_true",
                   help="only check batched == alone (greedy, staggered joins) and exit")
    p.add_argument("--memory-only", action="store_true",
                   help="only size the full-size architecture's memory (meta device, seconds)")
    p.add_argument("--profile", action="store_true",
                   help="add a torch.profiler summary of one tick (top ops)")
    p.add_argument("--profile-slots", type=int, default=None,
                   help="slot count to profile (default: the largest real-time one, or 1)")
    p.add_argument("--persona", default=None,
                   help="PersonaPlex checkpoint: measure a persona prompt's prefill, cold and "
                   "cached, and the co-batched calls' tick p99 while one prefills (--slots N)")
    p.add_argument("--voice", default=None, help="with --persona: the voice (default NATF2)")
    args = p.parse_args(argv)
    if args.max_slots < 1 or args.seconds <= 0:
        p.error("--max-slots must be >= 1 and --seconds > 0")
    fixed = _counts(p, args.slots, "--slots") if args.slots else None
    active = _counts(p, args.active, "--active") if args.active else None
    if active is not None and fixed is None:
        p.error("--active needs --slots (the slot counts to hold those calls)")

    import torch

    from ..engine.models import load_models

    if args.equivalence:
        from .engine_equivalence import equivalence

        eq = equivalence(args.checkpoint, args.device, args.dtype)
        sys.stdout.write(json.dumps({"bench": "engine", "equivalence": eq}, indent=2) + "\n")
        return 0 if eq["tokens_equal"] else 1
    if args.memory_only:
        out0 = {"bench": "engine", "full_size_memory": full_size_memory(args.context, args.dtype)}
        sys.stdout.write(json.dumps(out0, indent=2) + "\n")
        return 0

    t0 = time.perf_counter()
    try:
        models = load_models(args.checkpoint, device=args.device, dtype=args.dtype,
                             context=args.context, architecture=args.architecture,
                             stt=args.stt)
    except (ValueError, RuntimeError, OSError) as exc:
        sys.stderr.write(f"error: could not load {args.checkpoint!r} "
                         f"({args.architecture}) on {args.device}: {exc}\n")
        return 2
    load_s = time.perf_counter() - t0
    threads = args.cpu_threads or None
    if args.persona is not None:
        from .persona import persona_bench

        res = persona_bench(models, args.persona, args.voice, (fixed or [4])[-1], args.seconds)
        sys.stdout.write(json.dumps({"bench": "engine", "model": models.description,
                                     "device": str(models.device), "load_s": round(load_s, 2),
                                     "load_average_1m": round(os.getloadavg()[0], 2),
                                     "persona": res}, indent=2) + "\n")
        return 0
    if active is not None and fixed is not None:
        points = [measure(models, n, args.seconds, args.max_wall_s, threads, a,
                          not args.fixed_batch, args.paced)
                  for n in fixed for a in active if a <= n]
        best = max((q["slots"] for q in points if q["realtime"] and q["active"] == q["slots"]),
                   default=0)
    else:
        points, best = search(models, args.max_slots, args.seconds, args.max_wall_s, fixed,
                              threads)
    dev = models.device
    machine: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        machine["gpu"] = props.name
        machine["gpu_memory_bytes"] = props.total_memory
    weights = sum(p.numel() * p.element_size() for m in (models.mimi, models.lm)
                  for p in m.parameters())
    out: dict[str, Any] = {
        "bench": "engine",
        "model": models.description,
        "architecture": args.architecture,
        "dtype": str(models.dtype).removeprefix("torch."),
        "context": models.lm.context,
        "machine": machine,
        "load_s": round(load_s, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "weights_bytes": weights,
        "budget_ms": BUDGET_MS,
        "points": points,
        "max_realtime_slots": best,
        "searched_up_to": args.max_slots if fixed is None else max(fixed),
    }
    if dev.type == "cuda" and points:
        per_slot = points[-1]["state_bytes_per_slot"]
        free = machine["gpu_memory_bytes"] - weights
        out["max_slots_by_memory_estimate"] = int(free * 0.9 // max(per_slot, 1))
    if models.stt is not None:
        out["stt"] = stt_added(models, points, args.seconds, args.max_wall_s, threads)
    if args.profile:
        n = args.profile_slots or max(best, 1)
        out["profile"] = profile_tick(models, n, threads)
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0

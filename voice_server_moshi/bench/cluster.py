"""``bench cluster``: what the Ray Serve path costs against single-process ``serve``.

In one run, on the same checkpoint and device, it starts the real commands one after the
other: ``serve --slots S*R``, ``serve --slots S*R --ingress-workers 2`` and ``cluster
--replicas R --slots S``, and drives each with
the same Kyutai-style clients (Ogg/Opus at 80 ms, real time). It reports:

* ``one_call.frame_latency_ms``: one call alone (the engine far from its limit), per 80 ms
  frame, from sending caller frame k+1 to receiving the agent frame it produced
  (p50/p99); ``cluster_added_latency_ms`` is the cluster's minus ``serve``'s (Serve proxy
  hop, ingress, data plane), likewise for ``serve --ingress-workers 2``;
* ``cpu_per_call_ms_per_frame``: with R*S calls at once, CPU outside the model per call
  per 80 ms frame (one frame in and one out; normalised by the frames that moved) where it
  limits a process: ``serve``'s event-loop thread (Opus and the
  protocol, the one-process ceiling); with ``--ingress-workers`` the engine process's
  data-plane thread (what is left beside the model); for the cluster the ingress and
  Serve proxy processes, and ``calls_per_core`` from each;
* ``routing_ms``: connect to handshake for a new call (p50/max);
* ``one_call.say_ms``: the lone call sends a ``0x02`` say request a third of the way in:
  time from sending it to its ``0x40`` "queued" answer and to "started" (the first agent
  frame saying it reaches the client), through each front door;
* ``failover``: a replica killed mid-call: time until its calls are closed with an error,
  and until Ray has a replacement replica serving.

Prints one JSON object on stdout (``--out`` also writes it).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._cli_help import command_parser
from ..audio.moshi_frame import FRAME_SAMPLES

FRAME = FRAME_SAMPLES
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(xs), q)), 2) if xs else None


def _cpu_s(pid: int, threads: str | None = None) -> float:
    """utime+stime of a process: all its threads (None), its main thread ("main"), or the
    threads whose name starts with ``threads``."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if threads == "main" and task.name != str(pid):
            continue
        if threads not in (None, "main") and not name.startswith(threads):
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return total


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _pids_named(fragment: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if fragment in (p / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


class _Call:
    """A Kyutai-style client that timestamps frames up and audio down."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: list[float] = []
        self.got: list[float] = []
        self.connect_ms = 0.0
        self.error: str | None = None
        self.closed_at: float | None = None
        #: When a say request went out, and when each of its 0x40 statuses came back.
        self.said_at: float | None = None
        self.say_marks: dict[str, float] = {}

    async def run(self, n: int, *, hold_s: float = 0.0, say_at: int | None = None,
                  stop: asyncio.Event | None = None, answer_wait_s: float = 10.0) -> None:
        """Send ``n`` frames in real time (fewer if ``stop`` is set first), then wait for
        the answers (up to ``answer_wait_s`` + ``hold_s``) and close."""
        import sphn
        import websockets

        t0 = time.perf_counter()
        ws = await websockets.connect(self.url, proxy=None, compression=None, open_timeout=60)
        first = await ws.recv()
        self.connect_ms = (time.perf_counter() - t0) * 1000
        if not isinstance(first, bytes) or first[:1] != b"\x00":
            self.error = "refused"
            await ws.close()
            return

        async def reader() -> None:
            try:
                async for m in ws:
                    if isinstance(m, bytes) and m[:1] == b"\x01":
                        self.got.append(time.perf_counter())
                    elif isinstance(m, bytes) and m[:1] == b"\x05":
                        self.error = m[1:].decode()
                    elif isinstance(m, bytes) and m[:1] == b"\x40":
                        self.say_marks.setdefault(json.loads(m[1:])["status"],
                                                  time.perf_counter())
            except websockets.ConnectionClosed:
                pass
            self.closed_at = time.perf_counter()

        rd = asyncio.create_task(reader())
        writer = sphn.OpusStreamWriter(24000)
        t = np.arange(FRAME) / 24000
        start = time.perf_counter()
        for k in range(n):
            if self.closed_at is not None or (stop is not None and stop.is_set()):
                break
            pcm = (0.3 * np.sin(2 * np.pi * (220 + 5 * (k % 9)) * t)).astype(np.float32)
            data = writer.append_pcm(pcm)
            self.sent.append(time.perf_counter())
            try:
                if k == say_at:
                    self.said_at = time.perf_counter()
                    await ws.send(b"\x02hello there")
                await ws.send(b"\x01" + bytes(data))
            except websockets.ConnectionClosed:
                break
            # Paced on an absolute clock, like a phone line.
            await asyncio.sleep(max(0.0, start + (k + 1) * 0.08 - time.perf_counter()))
        deadline = time.perf_counter() + answer_wait_s + hold_s
        while (len(self.got) < len(self.sent) - 1  # noqa: ASYNC110 (a bounded poll)
               and time.perf_counter() < deadline and self.closed_at is None):
            await asyncio.sleep(0.05)
        await ws.close()
        await rd

    def say_ms(self) -> dict[str, float | None]:
        """Say request to each of its statuses, in ms (None: never came)."""
        return {status: (None if self.said_at is None or status not in self.say_marks
                         else round((self.say_marks[status] - self.said_at) * 1000, 1))
                for status in ("queued", "started", "finished")}

    def latencies_ms(self) -> list[float]:
        # Agent frame j comes from the tick that consumed caller frame j+1.
        return [(g - s) * 1000 for g, s in zip(self.got, self.sent[1:], strict=False)]


def _start(cmd: list[str], timeout_s: float, *, stderr: Any = subprocess.DEVNULL,
           ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr,
                            stdin=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    line: list[str] = []
    th = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
    th.start()
    th.join(timeout_s)
    if not line or not line[0]:
        proc.kill()
        raise RuntimeError(f"{' '.join(cmd[3:])} did not start within {timeout_s} s")
    return proc, json.loads(line[0])


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _drive(url: str, calls: int, frames: int, cpu_pids: dict[int, str | None],
                 side_pids: tuple[int, ...] = ()) -> dict[str, Any]:
    """One call alone (the engine far from its limit: latency is the path's), then
    ``calls`` at once (CPU outside the model per call and frame)."""
    solo = _Call(url)
    await solo.run(frames, say_at=frames // 3)
    lat = solo.latencies_ms()
    before = {p: _cpu_s(p, threads) for p, threads in cpu_pids.items()}
    side_before = sum(_cpu_s(p) for p in side_pids)
    t0 = time.perf_counter()
    cs = [_Call(url) for _ in range(calls)]
    await asyncio.gather(*(c.run(frames) for c in cs))
    wall = time.perf_counter() - t0
    cpu = sum(_cpu_s(p, threads) - before[p] for p, threads in cpu_pids.items())
    side = sum(_cpu_s(p) for p in side_pids) - side_before
    frames_done = sum(len(c.got) for c in cs)
    # Each call-frame is one frame in (Opus decode) and one out (encode); an engine behind
    # real time returns fewer, so normalise by the frames that actually moved.
    moved = sum(len(c.sent) + len(c.got) for c in cs) / 2
    per_frame_ms = 1000 * cpu / moved if moved else None
    extra = {} if not side_pids or not moved else {
        "side_processes_cpu_per_call_ms_per_frame": round(1000 * side / moved, 3)}
    return extra | {
        "one_call": {"frames_sent": len(solo.sent), "frames_received": len(solo.got),
                     "frame_latency_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99)},
                     "routing_ms": round(solo.connect_ms, 1), "say_ms": solo.say_ms()},
        "calls": calls, "frames_per_call": frames, "wall_s": round(wall, 2),
        "frames_sent": sum(len(c.sent) for c in cs), "frames_received": frames_done,
        "errors": [c.error for c in cs if c.error],
        "routing_ms": {"p50": _pct([c.connect_ms for c in cs], 50),
                       "max": round(max(c.connect_ms for c in cs), 1)},
        "cpu_outside_model_s": round(cpu, 3),
        "cpu_per_call_ms_per_frame": None if per_frame_ms is None else round(per_frame_ms, 3),
        "calls_per_core": None if not per_frame_ms else round(80.0 / per_frame_ms, 1),
    }


async def _failover(url: str, port: int, frames: int) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        caps = (await http.get(f"http://127.0.0.1:{port}/capacity")).json()
        pids = {r["replica"]: r["pid"] for r in caps["replicas"]}
        call = _Call(url)
        task = asyncio.create_task(call.run(frames))
        while not call.sent:  # noqa: ASYNC110 (a short poll)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        caps = (await http.get(f"http://127.0.0.1:{port}/capacity")).json()
        victim = next(r for r in caps["replicas"] if r["active_slots"] > 0)
        killed = time.perf_counter()
        os.kill(int(victim["pid"]), signal.SIGKILL)
        await task
        closed_ms = None if call.closed_at is None else (call.closed_at - killed) * 1000
        restored_s = None
        while time.perf_counter() - killed < 300:
            caps = (await http.get(f"http://127.0.0.1:{port}/capacity")).json()
            fresh = [r for r in caps["replicas"] if r["ready"] and r["pid"] not in pids.values()]
            if fresh:
                restored_s = time.perf_counter() - killed
                break
            await asyncio.sleep(0.2)
    return {"call_closed_with_error_ms": None if closed_ms is None else round(closed_ms, 1),
            "error": call.error,
            "replica_restored_s": None if restored_s is None else round(restored_s, 1)}


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench cluster", __doc__)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--slots", type=int, default=2, help="slots per replica")
    p.add_argument("--checkpoint", default="dev")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=8.0, help="audio per call")
    p.add_argument("--health-check-period-s", type=float, default=1.0)
    p.add_argument("--no-failover", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    calls = args.replicas * args.slots
    frames = max(10, round(args.seconds / 0.08))
    cli = [sys.executable, "-m", "voice_server_moshi.cli"]
    # No no-input timeout: a bench call stops sending while it waits for the engine's last
    # frames, and on a CPU the engines lag by seconds (a real client keeps streaming).
    common = ["--checkpoint", args.checkpoint, "--device", args.device, "--port", "0",
              "--no-input-timeout-s", "0"]
    result: dict[str, Any] = {
        "bench": "cluster", "checkpoint": args.checkpoint, "device": args.device,
        "replicas": args.replicas, "slots_per_replica": args.slots,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
    }
    # 1. single-process serve, the same number of calls in one engine: Opus and the
    # protocol run on its event-loop (main) thread, the ceiling of one process.
    proc, info = _start([*cli, "serve", "--slots", str(calls), *common], 300)
    try:
        result["serve"] = asyncio.run(_drive(info["url"], calls, frames, {proc.pid: "main"}))
        result["serve"]["cpu_measured"] = "event-loop thread of the serve process"
    finally:
        _stop(proc)
    # 2. serve --ingress-workers 2: the engine process keeps the model and the PCM data
    # plane; Opus and the protocol run in the workers.
    proc, info = _start([*cli, "serve", "--slots", str(calls), "--ingress-workers", "2",
                         *common], 300)
    try:
        workers = [pid for pid in _pids_named("spawn_main") if _parent(pid) == proc.pid]
        engine_side = asyncio.run(_drive(info["url"], calls, frames,
                                         {proc.pid: "engine-data"}, tuple(workers)))
        result["serve_ingress_workers"] = engine_side
        engine_side["cpu_measured"] = ("engine process: its data-plane thread; side processes:"
                                       " the ingress workers (Opus, protocol; scale with cores)")
        engine_side["workers"] = len(workers)
    finally:
        _stop(proc)
    # 3. the cluster.
    proc, info = _start([*cli, "cluster", "--replicas", str(args.replicas), "--slots",
                         str(args.slots), "--health-check-period-s",
                         str(args.health_check_period_s), *common], 600)
    try:
        outside: dict[int, str | None] = {
            pid: None for pid in _pids_named("ServeReplica:voice-server-moshi:MoshiIngress")}
        outside |= {pid: None for pid in _pids_named("ray::ProxyActor")}
        result["cluster"] = asyncio.run(_drive(info["url"], calls, frames, outside))
        result["cluster"]["cpu_measured"] = "ingress replica + Serve proxy processes"
        if not args.no_failover:
            result["failover"] = asyncio.run(_failover(info["url"], info["port"], frames))
    finally:
        _stop(proc)
    s1, c1 = result["serve"]["one_call"], result["cluster"]["one_call"]
    s, c = s1["frame_latency_ms"], c1["frame_latency_ms"]
    if s["p50"] is not None and c["p50"] is not None:
        result["cluster_added_latency_ms"] = {"p50": round(c["p50"] - s["p50"], 2),
                                              "p99": round(c["p99"] - s["p99"], 2)}
    w = result["serve_ingress_workers"]["one_call"]["frame_latency_ms"]
    if s["p50"] is not None and w["p50"] is not None:
        result["ingress_workers_added_latency_ms"] = {"p50": round(w["p50"] - s["p50"], 2),
                                                      "p99": round(w["p99"] - s["p99"], 2)}
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0

"""``bench serve-persona``: personas (PersonaPlex, ADR 0130) through a real ``serve``.

Starts ``serve --checkpoint dev-personaplex`` (or ``--checkpoint``) with one persona warmed
(``--warm-persona``) and measures, with the Kyutai-protocol clients of ``bench cluster``
(Ogg/Opus every 80 ms on an absolute clock):

* **start**: ``--rounds`` pairs of calls alone, a plain call then a call with the warmed
  (cached) persona: the time from connecting to the handshake (``connect_ms``) and from
  the first caller frame to the first agent frame (``first_audio_ms``); medians and the
  cached-minus-plain difference in 80 ms ticks (the goal: under one tick);
* **co-batched**: ``--calls`` plain calls for ``--seconds``, once alone and once while a
  call with a new persona (never seen: a cold prefill) connects a second in: the plain
  calls' frame-lag p99 and ``serve``'s mean tick (its ``/metrics`` histogram), and the
  ratios with / without.

The machine's load moves every absolute number: read the ratios, taken in one run.
Prints one JSON object on stdout (``--out`` also writes it).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .._cli_help import command_parser
from .cluster import _Call, _pct, _start, _stop
from .serve import _tick_totals

WARM = "You are the support line of Acme Telecom. Be brief and friendly."


def _first_audio_ms(c: _Call) -> float | None:
    return round((c.got[0] - c.sent[0]) * 1000, 1) if c.got and c.sent else None


async def _start_latency(url: str, rounds: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {"plain": [], "cached_persona": []}
    persona_url = url + "?" + urlencode({"text_prompt": WARM, "voice_prompt": "NATF2.pt"})
    for _ in range(rounds):
        for name, u in (("plain", url), ("cached_persona", persona_url)):
            c = _Call(u)
            await c.run(12)
            rows[name].append({"connect_ms": round(c.connect_ms, 1),
                               "first_audio_ms": _first_audio_ms(c), "error": c.error})
    med = {name: {k: statistics.median(float(r[k]) for r in rs if r[k] is not None)
                  for k in ("connect_ms", "first_audio_ms")} for name, rs in rows.items()}
    diff = {k: round(med["cached_persona"][k] - med["plain"][k], 1)
            for k in ("connect_ms", "first_audio_ms")}
    return {"calls": rows, "median": med, "cached_minus_plain_ms": diff,
            "cached_minus_plain_ticks": {k: round(v / 80.0, 2) for k, v in diff.items()}}


async def _co_batched(url: str, port: int, calls: int, frames: int, cold: str | None
                      ) -> dict[str, Any]:
    s0, n0 = _tick_totals(port)
    cs = [_Call(url) for _ in range(calls)]
    runs = [asyncio.create_task(c.run(frames)) for c in cs]
    prefill_ms = None
    if cold is not None:
        await asyncio.sleep(1.0)
        newcomer = _Call(url + "?" + urlencode({"text_prompt": cold, "voice_prompt": "NATM1"}))
        await newcomer.run(3)
        prefill_ms = round(newcomer.connect_ms, 1)  # its handshake waits for the prefill
    await asyncio.gather(*runs)
    s1, n1 = _tick_totals(port)
    lags = [lat for c in cs for lat in c.latencies_ms()]
    return {"lag_p50_ms": _pct(lags, 50), "lag_p99_ms": _pct(lags, 99),
            "serve_tick_mean_ms": round(1000 * (s1 - s0) / max(1.0, n1 - n0), 2),
            "cold_call_connect_ms": prefill_ms, "errors": [c.error for c in cs if c.error]}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench serve-persona", __doc__)
    p.add_argument("--checkpoint", default="dev-personaplex")
    p.add_argument("--device", default="cpu")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--calls", type=int, default=2, help="co-batched plain calls")
    p.add_argument("--seconds", type=float, default=8.0, help="audio per co-batched call")
    p.add_argument("--rounds", type=int, default=5, help="plain/cached call pairs")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "voice_server_moshi.cli", "serve", "--port", "0",
           "--checkpoint", args.checkpoint, "--device", args.device,
           "--slots", str(args.slots), "--warm-persona", WARM]
    proc, info = _start(cmd, 600)
    try:
        url, port = str(info["url"]), int(info["port"])
        start = asyncio.run(_start_latency(url, args.rounds))
        frames = int(args.seconds / 0.08)
        alone = asyncio.run(_co_batched(url, port, args.calls, frames, None))
        cold = asyncio.run(_co_batched(url, port, args.calls, frames,
                                       f"You are agent number {os.getpid()} of a bakery."))
    finally:
        _stop(proc)
    out = {"bench": "serve-persona", "checkpoint": args.checkpoint, "device": args.device,
           "slots": args.slots, "platform": platform.platform(), "cpus": os.cpu_count(),
           "load_average_1m": round(os.getloadavg()[0], 2), "start": start,
           "co_batched": {"without_prefill": alone, "with_cold_prefill": cold,
                          "lag_p99_ratio": _ratio(cold["lag_p99_ms"], alone["lag_p99_ms"]),
                          "serve_tick_mean_ratio": _ratio(cold["serve_tick_mean_ms"],
                                                          alone["serve_tick_mean_ms"])}}
    text = json.dumps(out, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0

"""``bench serve-persona``: personas (PersonaPlex, ADR 0130) through a real ``serve``.

Starts ``serve --checkpoint dev-personaplex`` (or ``--checkpoint``) with one persona warmed
(``--warm-persona``) and measures, with the Kyutai-protocol clients of ``bench cluster``
(Ogg/Opus every 80 ms on an absolute clock):

* **start**: ``--rounds`` pairs of calls alone, a plain call then a call with the warmed
  (cached) persona: the time from connecting to the handshake (``connect_ms``) and from
  the first caller frame to the first agent frame (``first_audio_ms``); medians and the
  cached-minus-plain difference in 80 ms ticks (the goal: under one tick);
* **co-batched**: ``--calls`` plain calls for ``--seconds`` while, from a second in, calls
  with a persona connect one after another and talk for 3 frames each: the warmed persona
  (cached: a row more in the batch, no prefill), or a new persona each time (the same row,
  and a cold prefill all along). Each window runs on a fresh ``serve``, so its recent-tick
  quantiles (``moshi_engine_tick_recent_p99_seconds``) cover that window's ticks only;
  ``--pairs`` times: ``serve``'s tick p99 and mean, the plain calls' frame-lag p99 and the
  p99 gap between their agent frames, and the ratios cold / cached (medians over the
  pairs).

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
from .serve import _metrics, _ratio, _tick_totals

TICK_P99 = "moshi_engine_tick_recent_p99_seconds"

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


def _gaps_ms(cs: list[_Call]) -> list[float]:
    return [(b - a) * 1000 for c in cs for a, b in zip(c.got, c.got[1:], strict=False)]


async def _co_batched(url: str, port: int, calls: int, frames: int, newcomer: str
                      ) -> dict[str, Any]:
    """``calls`` plain calls; from a second in until they end, one call after another with
    a persona connects and talks for 3 frames: ``newcomer`` (the warmed persona: cached),
    or ``newcomer`` numbered (a new persona each time: a cold prefill all along)."""
    s0, n0 = _tick_totals(port)
    cs = [_Call(url) for _ in range(calls)]
    runs = [asyncio.create_task(c.run(frames)) for c in cs]
    await asyncio.sleep(1.0)
    others: list[_Call] = []
    while not all(r.done() for r in runs) and len(others) < 1000:
        text = newcomer if newcomer == WARM else f"{newcomer} (call {len(others) + 1})"
        other = _Call(url + "?" + urlencode({"text_prompt": text, "voice_prompt": "NATF2.pt"}))
        others.append(other)
        await other.run(3)
    await asyncio.gather(*runs)
    after = _metrics(port)
    s1, n1 = _tick_totals(port, after)
    lags = [lat for c in cs for lat in c.latencies_ms()]
    p99 = after.get(TICK_P99)
    return {"lag_p50_ms": _pct(lags, 50), "lag_p99_ms": _pct(lags, 99),
            "agent_frame_gap_p99_ms": _pct(_gaps_ms(cs), 99),
            "serve_tick_p99_ms": None if p99 is None else round(1000 * p99, 2),
            "serve_tick_mean_ms": round(1000 * (s1 - s0) / max(1.0, n1 - n0), 2),
            # A cold newcomer's handshake waits for its prefill.
            "newcomers": len(others),
            "newcomer_connect_ms": round(statistics.median(o.connect_ms for o in others), 1),
            "errors": [c.error for c in [*cs, *others] if c.error]}


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench serve-persona", __doc__)
    p.add_argument("--checkpoint", default="dev-personaplex")
    p.add_argument("--device", default="cpu")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--calls", type=int, default=2, help="co-batched plain calls")
    p.add_argument("--seconds", type=float, default=8.0, help="audio per co-batched call")
    p.add_argument("--rounds", type=int, default=5, help="plain/cached call pairs")
    p.add_argument("--pairs", type=int, default=1,
                   help="co-batched window pairs (cached newcomers / cold prefills), each "
                   "window on a fresh serve")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.pairs < 1 or args.rounds < 1 or args.calls < 1:
        p.error("--pairs, --rounds and --calls need values >= 1")
    cmd = [sys.executable, "-m", "voice_server_moshi.cli", "serve", "--port", "0",
           "--checkpoint", args.checkpoint, "--device", args.device,
           "--slots", str(args.slots), "--warm-persona", WARM]
    frames = int(args.seconds / 0.08)

    def on_fresh_serve(run: Any) -> Any:
        proc, info = _start(cmd, 600)
        try:
            return asyncio.run(run(str(info["url"]), int(info["port"])))
        finally:
            _stop(proc)

    start = on_fresh_serve(lambda url, _port: _start_latency(url, args.rounds))
    pairs = []
    for k in range(args.pairs):
        alone = on_fresh_serve(lambda url, port: _co_batched(url, port, args.calls, frames,
                                                             WARM))
        cold = on_fresh_serve(lambda url, port, k=k: _co_batched(
            url, port, args.calls, frames, f"You are agent {os.getpid()}-{k} of a bakery."))
        pairs.append({"with_cached_newcomer": alone, "with_cold_prefill": cold} | {
            f"{m}_ratio": _ratio(cold[m], alone[m])
            for m in ("serve_tick_p99_ms", "serve_tick_mean_ms", "lag_p99_ms",
                      "agent_frame_gap_p99_ms")})
    medians = {key: statistics.median(r[key] for r in pairs if r[key] is not None)
               for key in pairs[0] if key.endswith("_ratio")
               and any(r[key] is not None for r in pairs)}
    out = {"bench": "serve-persona", "checkpoint": args.checkpoint, "device": args.device,
           "slots": args.slots, "platform": platform.platform(), "cpus": os.cpu_count(),
           "load_average_1m": round(os.getloadavg()[0], 2), "start": start,
           "co_batched": {"pairs": pairs, "median_ratios": medians}}
    text = json.dumps(out, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0

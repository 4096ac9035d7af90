"""The hostile side of ``bench fuzz``: connections to a live ``serve`` that open with fuzzed
query strings and send fuzzed messages (:mod:`.fuzz_messages`), flooding, steady or at
real time, then leave by a clean close, a dropped connection or by waiting for the
server to close; each records how the server ended it.

Run as its own process (``python -m voice_server_moshi.bench.fuzz_client URL --messages N``)
so its CPU does not slow the canary call that ``bench fuzz`` measures: it prints
``{"sent": n}`` lines as it goes and one ``{"result": {...}}`` line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import time
from collections import Counter
from typing import Any

from .fuzz_messages import MessageMaker, opus_stream, query

#: How a server may end (or refuse) a fuzzing connection, docs/operations.md: normal,
#: going away, bad payload, policy (limits, bad request), too big, busy. 1006: no close
#: frame seen, when the server closed while the client was still writing.
DOCUMENTED_CLOSES = frozenset({1000, 1001, 1006, 1007, 1008, 1009, 1013})
#: websockets' keepalive close (a peer that answered no ping in time); any other 1011 is
#: the server failing a call, which a fuzz must not cause.
KEEPALIVE_CLOSE = (1011, "keepalive ping timeout")


class Tally:
    def __init__(self, limit: int, progress_every: int) -> None:
        self.limit = limit
        self.sent = 0
        self.progress_every = progress_every
        self.connections = 0
        self.families: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.errors_read = 0
        self.handshakes = 0
        self.connect_failures: Counter[str] = Counter()
        self.undocumented: list[dict[str, Any]] = []

    def count(self, family: str) -> None:
        self.sent += 1
        self.families[family] += 1
        if self.sent % self.progress_every == 0:
            sys.stdout.write(json.dumps({"sent": self.sent}) + "\n")
            sys.stdout.flush()

    @property
    def done(self) -> bool:
        return self.sent >= self.limit


async def one_connection(base: str, rng: random.Random, stream: list[bytes],
                         tally: Tally) -> None:
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    target, _ = query(rng)
    maker = MessageMaker(rng, stream)
    tally.connections += 1
    try:
        ws = await websockets.connect(base + target, proxy=None, compression=None,
                                      open_timeout=30, max_size=None, max_queue=None)
    except InvalidStatus as exc:
        tally.connect_failures[f"http {exc.response.status_code}"] += 1
        return
    except (OSError, TimeoutError) as exc:  # refused or reset: serve may be gone
        tally.connect_failures[type(exc).__name__] += 1
        return
    got_error = asyncio.Event()

    async def reader() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for m in ws:
                if isinstance(m, bytes) and m[:1] == b"\x00":
                    tally.handshakes += 1
                elif isinstance(m, bytes) and m[:1] == b"\x05":
                    tally.errors_read += 1
                    got_error.set()

    rd = asyncio.create_task(reader())
    pace = rng.choice([0.0, 0.0, 0.012, 0.08])
    n = rng.randint(1, 30 if pace == 0.08 else 400)
    try:
        for _ in range(n):
            if tally.done or ws.close_code is not None:
                break
            m = maker.next()
            await ws.send(m.data)
            tally.count(m.family)
            await asyncio.sleep(pace)
    except ConnectionClosed:
        pass
    ending = rng.choice(["close", "close", "abort", "wait"])
    if ending == "abort":
        ws.transport.abort()
    elif ending == "wait":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(rd), 2.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 5)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(rd, 5)
    rcvd = ws.protocol.close_rcvd
    if rcvd is None:
        tally.closes["client" if ending != "wait" else "none"] += 1
        return
    # Reasons with numbers in them (1009's frame size) are counted as one.
    tally.closes[f"{rcvd.code} {re.sub(r'[0-9]+', 'N', rcvd.reason)}"] += 1
    if rcvd.code not in DOCUMENTED_CLOSES and (rcvd.code, rcvd.reason) != KEEPALIVE_CLOSE:
        tally.undocumented.append({"code": rcvd.code, "reason": rcvd.reason,
                                   "target": target})


async def fuzz(url: str, messages: int, seed: int, connections: int,
               progress_every: int = 1000) -> dict[str, Any]:
    """Send ``messages`` fuzzed messages over ``connections`` concurrent connections."""
    base = url.split("/api/chat")[0]
    stream = opus_stream(50, seed)
    tally = Tally(messages, progress_every)
    t0 = time.monotonic()

    async def worker(w: int) -> None:
        k = 0
        while not tally.done:
            await one_connection(base, random.Random(f"{seed}-{w}-{k}"), stream, tally)
            k += 1
            if sum(tally.connect_failures.values()) > 50:
                return  # serve is gone: stop, the report says so

    await asyncio.gather(*(worker(w) for w in range(connections)))
    return {"messages": tally.sent, "connections": tally.connections,
            "seconds": round(time.monotonic() - t0, 1), "handshakes": tally.handshakes,
            "errors_read": tally.errors_read, "families": dict(tally.families),
            "server_closes": dict(tally.closes.most_common()),
            "connect_failures": dict(tally.connect_failures),
            "undocumented_closes": tally.undocumented[:20]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--connections", type=int, default=3)
    args = p.parse_args(argv)
    result = asyncio.run(fuzz(args.url, args.messages, args.seed, args.connections))
    sys.stdout.write(json.dumps({"result": result}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

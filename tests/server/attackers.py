"""Hostile Kyutai-protocol clients, run as their own process so that their CPU does not
slow the well-behaved client a test measures.

    python attackers.py bomb URL     # an Opus bomb: 300 pages of 4 s of audio each
    python attackers.py flood URL    # up to 30 000 empty messages, never reading a reply

Each builds its messages, prints "ready" and waits for a line on stdin before connecting
and attacking (so its start-up CPU does not land in the window a test measures), then
prints one JSON line: the close code and reason the server sent, the 0x05 errors it read
after the attack, and how many messages went out before the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import websockets
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).parent))
from oggcraft import opus_bomb


async def attack(kind: str, url: str) -> dict[str, object]:
    messages = [b"\x01" + m for m in opus_bomb(300)] if kind == "bomb" else [b""] * 30_000
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    ws = await websockets.connect(url, proxy=None, compression=None, open_timeout=30,
                                  max_queue=None)
    first = await asyncio.wait_for(ws.recv(), 30)
    assert isinstance(first, bytes) and first[:1] == b"\x00", first
    sent = 0
    try:
        for m in messages:
            await ws.send(m)
            sent += 1
            if sent % 50 == 0:  # let the reader see a close: stop when the server has
                await asyncio.sleep(0)
                if ws.close_code is not None:
                    break
    except ConnectionClosed:
        pass
    errors: list[str] = []
    try:
        while True:
            msg = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(msg, bytes) and msg[:1] == b"\x05":
                errors.append(msg[1:].decode())
    except (ConnectionClosed, TimeoutError):
        pass
    await ws.close()
    return {"kind": kind, "sent": sent, "close_code": ws.close_code,
            "close_reason": ws.close_reason, "errors": errors}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(attack(sys.argv[1], sys.argv[2]))) + "\n")

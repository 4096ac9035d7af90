"""Hostile Kyutai-protocol clients, run as their own process so that their CPU does not
slow the well-behaved client a test measures.

    python attackers.py bomb URL     # an Opus bomb: 300 pages of 4 s of audio each
    python attackers.py flood URL    # 30 000 empty messages, never reading a reply

Prints one JSON line: the close code and reason the server sent, the 0x05 errors it read
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
    ws = await websockets.connect(url, proxy=None, compression=None, open_timeout=30,
                                  max_queue=None)
    first = await asyncio.wait_for(ws.recv(), 30)
    assert isinstance(first, bytes) and first[:1] == b"\x00", first
    messages = [b"\x01" + m for m in opus_bomb(300)] if kind == "bomb" else [b""] * 30_000
    sent = 0
    try:
        for m in messages:
            await ws.send(m)
            sent += 1
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

"""WebSocket plumbing shared by the reference adapters: open, read JSON, describe a close."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake, InvalidStatus

from ..errors import ConnectError, ConnectTimeoutError, ServerBusyError

#: Keepalive: a peer that stops answering WebSocket pings is declared gone within
#: PING_INTERVAL_S + PING_TIMEOUT_S (a vanished TCP peer otherwise never reports).
PING_INTERVAL_S = 10.0
PING_TIMEOUT_S = 10.0
#: Agent audio messages can be large (seconds of base64 PCM).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a socket ended; ``clean`` is False when no close frame arrived (code 1006)."""

    code: int
    reason: str

    @property
    def clean(self) -> bool:
        return self.code != 1006

    def describe(self) -> str:
        if not self.clean:
            return "peer vanished (connection dropped without a close frame, 1006)"
        return f"peer closed the socket with code {self.code}" + (
            f" ({self.reason})" if self.reason else ""
        )


def close_info(ws: ClientConnection) -> CloseInfo:
    code = ws.close_code
    return CloseInfo(1006 if code is None else code, ws.close_reason or "")


async def open_ws(
    url: str,
    *,
    headers: Mapping[str, str] | None,
    timeout_s: float,
    vendor: str,
    subprotocols: list[str] | None = None,
) -> ClientConnection:
    """Open a client socket; map every failure to :class:`ConnectError` (no secret in it)."""
    shown = url.split("?", 1)[0]  # query strings may carry signatures or tokens
    try:
        return await asyncio.wait_for(
            websockets.connect(
                url,
                additional_headers=dict(headers or {}),
                subprotocols=[websockets.Subprotocol(s) for s in subprotocols or []] or None,
                open_timeout=timeout_s,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                close_timeout=2.0,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,
            ),
            timeout_s,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (429, 503):
            raise ServerBusyError(f"{vendor}: {shown} refused the call: HTTP {status}") from None
        hint = " (check the API key)" if status in (401, 403) else ""
        raise ConnectError(f"{vendor}: {shown} rejected the socket: HTTP {status}{hint}") from None
    except TimeoutError:
        raise ConnectTimeoutError(
            f"{vendor}: no WebSocket handshake from {shown} within {timeout_s:g} s"
        ) from None
    except (OSError, InvalidHandshake) as exc:
        raise ConnectError(f"{vendor}: cannot open {shown}: {exc}") from None


async def recv_json(ws: ClientConnection, timeout_s: float) -> dict[str, Any]:
    """The next JSON object from ``ws``; non-JSON and non-object messages are skipped."""
    async with asyncio.timeout(timeout_s):
        while True:
            msg = parse_json(await ws.recv())
            if msg is not None:
                return msg


def parse_json(raw: str | bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return msg if isinstance(msg, dict) else None


def http_to_ws(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


async def send_json(ws: ClientConnection, msg: Mapping[str, Any]) -> None:
    await ws.send(json.dumps(msg, separators=(",", ":")))

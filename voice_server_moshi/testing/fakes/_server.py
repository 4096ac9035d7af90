"""The loopback WebSocket server every fake vendor peer is built on.

A fake is a real ``websockets`` server on 127.0.0.1 (port chosen by the OS). Each accepted
socket becomes a :class:`FakeSession` that records what the client sent and what the fake
sent, so tests can assert on both; the vendor subclass implements the protocol in
:meth:`FakePeer._serve` and its scripting methods act on the latest session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..._log import get_logger

log = get_logger("voice_server_moshi.testing.fakes")


@dataclass
class FakeSession:
    """One client socket as the fake saw it."""

    ws: ServerConnection
    path: str
    query: dict[str, str]
    headers: Headers
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    vanished: bool = False
    state: dict[str, Any] = field(default_factory=dict)

    async def send(self, msg: Mapping[str, Any]) -> bool:
        """Send one JSON message; False when the client is gone (the fake carries on)."""
        if self.closed.is_set():
            return False
        self.sent.append(dict(msg))
        try:
            await self.ws.send(json.dumps(msg, separators=(",", ":")))
        except ConnectionClosed:
            return False
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame carrying ``code`` and ``reason``."""
        await self.ws.close(code, reason)
        self.closed.set()

    def vanish(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        self.vanished = True
        self.closed.set()
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]


class FakePeer:
    """Base class of the fake vendor peers; an async context manager that runs the server."""

    #: Path the vendor serves its socket on (e.g. ``/v1/realtime``).
    ws_path: str = "/"
    vendor: str = "fake"

    def __init__(self, *, api_key: str | None = None) -> None:
        #: When set, the socket handshake needs this credential (checked by
        #: :meth:`_authorized`); anything else gets HTTP 401, like the real services.
        self.api_key = api_key
        self.sessions: list[FakeSession] = []
        self.handshakes_refused = 0
        self._server: Server | None = None
        self._new_session = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            max_size=16 * 1024 * 1024,
            ping_interval=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            self._server.close(close_connections=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def port(self) -> int:
        assert self._server is not None, "use the fake as an async context manager"
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL to point the adapter (or the vendor SDK) at."""
        return self.http_url

    # -- scripting helpers -------------------------------------------------------------

    @property
    def session(self) -> FakeSession:
        """The latest session (the one scripted actions act on)."""
        if not self.sessions:
            raise RuntimeError(f"{self.vendor} fake: no client has connected")
        return self.sessions[-1]

    async def wait_session(self, *, count: int = 1, timeout_s: float = 10.0) -> FakeSession:
        """Wait until ``count`` sessions connected and the latest is ready (configured)."""
        async with asyncio.timeout(timeout_s):
            async with self._new_session:
                await self._new_session.wait_for(lambda: len(self.sessions) >= count)
            await self.sessions[count - 1].ready.wait()
        return self.sessions[count - 1]

    async def wait_received(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """Wait for a client message matching ``predicate`` in the latest session."""
        async with asyncio.timeout(timeout_s):
            while True:
                for msg in self.session.received:
                    if predicate(msg):
                        return msg
                await asyncio.sleep(0.01)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.session.close(code, reason)

    async def vanish(self) -> None:
        self.session.vanish()
        await asyncio.sleep(0)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- for subclasses ----------------------------------------------------------------

    def _authorized(self, request: Request, query: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, qs = request.path.partition("?")
        if path.rstrip("/") != self.ws_path.rstrip("/"):
            return conn.respond(HTTPStatus.NOT_FOUND, f"no socket at {path}\n")
        query = _parse_query(qs)
        if not self._authorized(request, query):
            self.handshakes_refused += 1
            return conn.respond(HTTPStatus.UNAUTHORIZED, "invalid credentials\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path, _, qs = ws.request.path.partition("?")
        session = FakeSession(ws=ws, path=path, query=_parse_query(qs), headers=ws.request.headers)
        async with self._new_session:
            self.sessions.append(session)
            self._new_session.notify_all()
        try:
            await self._serve(session)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("fake_peer_failed", vendor=self.vendor)
            raise
        finally:
            session.closed.set()

    async def _serve(self, session: FakeSession) -> None:
        raise NotImplementedError

    async def _receive(self, session: FakeSession) -> dict[str, Any] | None:
        """The next JSON message from the client (recorded), or None when it is gone."""
        while True:
            try:
                raw = await session.ws.recv()
            except ConnectionClosed:
                session.closed.set()
                return None
            try:
                msg = json.loads(raw)
            except ValueError:
                session.received.append({"_unparsed": str(raw)[:200]})
                continue
            if isinstance(msg, dict):
                session.received.append(msg)
                return msg


def _parse_query(qs: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(qs, keep_blank_values=True))

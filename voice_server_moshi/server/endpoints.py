"""The plain-HTTP endpoints every front door answers, written once (ADR 0110):

* ``GET /healthz``: 200 while the process serves;
* ``GET /readyz``: 200 when the engine(s) behind the door are ready and a slot is free,
  else 503 with the reason;
* ``GET /capacity``: JSON ``{"slots", "free_slots", "active_slots", "ready", ...}``;
* ``GET /metrics``: Prometheus text format (bearer token when auth is on).

:class:`Capacity` and :func:`readiness` are the door-independent part (the cluster's
FastAPI routes use them too); :class:`HttpFront` is the whole ``process_request`` of a
``websockets`` door (``serve``, its ingress workers): auth with the per-address limit on
wrong tokens, the endpoints, an optional static web client, 404 for the rest.
"""

from __future__ import annotations

import http
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .._log import get_logger
from .auth import DoorAuth, FailureLimiter, address_of, throttled_response
from .config import ServerConfig
from .counters import ServerCounters
from .logsafe import SafeLogger
from .responses import bytes_response, json_response, response
from .static import StaticFiles

__all__ = ["Capacity", "HttpFront", "readiness"]

log = SafeLogger(get_logger(__name__))

NOT_FOUND = "not found: try /api/chat, /healthz, /readyz, /capacity, /metrics\n"


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a door's engines hold now."""

    slots: int
    free_slots: int
    #: Every engine behind the door warmed up and running.
    ready: bool
    #: Why not, when not ready ("warming up", "engine tick thread is not running", ...).
    not_ready: str = "warming up"
    #: More for ``/capacity`` (the cluster: its replicas, the ingress).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"slots": self.slots, "free_slots": self.free_slots,
                "active_slots": self.slots - self.free_slots, "ready": self.ready,
                **self.extra}


def readiness(cap: Capacity, *, closing: bool = False) -> tuple[int, dict[str, Any]]:
    """``/readyz``'s status and JSON body."""
    ready = cap.ready and cap.free_slots > 0 and not closing
    reason = ("ok" if ready else "closing" if closing else cap.not_ready if not cap.ready
              else "no free slot")
    status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
    return status.value, {"ready": ready, "reason": reason, "free_slots": cap.free_slots}


class HttpFront:
    """``process_request`` of a ``websockets`` front door."""

    def __init__(self, config: ServerConfig, counters: ServerCounters, *,
                 capacity: Callable[[], Awaitable[Capacity]],
                 metrics: Callable[[], Awaitable[str]]) -> None:
        self.config = config
        self.counters = counters
        self.capacity = capacity
        self.metrics = metrics
        self.closing = False
        self.limiter = FailureLimiter(config.auth_max_failures, config.auth_window_s)
        #: One token check and guess throttle per process (ADR 0101).
        self.auth = DoorAuth(config.auth_token, self.limiter)
        self.static = StaticFiles(config.static_dir) if config.static_dir else None

    async def _auth_refusal(self, connection: ServerConnection, request: Request,
                            path: str) -> Response | None:
        """None when the request may go on (the right token always may); else 401, or 429
        (held a moment) for a wrong token from an address that guesses too often."""
        addr = address_of(connection.remote_address)
        refusal = await self.auth.refusal(addr, request.headers, request.path)
        if refusal is None:
            return None
        if refusal.retry_after is not None:
            self.counters.auth_throttled += 1
            return throttled_response(refusal.retry_after)
        self.counters.auth_failures += 1
        log.warning("unauthorized request", path=path, remote=addr)
        return response(http.HTTPStatus.UNAUTHORIZED, refusal.text, "text/plain")

    async def process_request(self, connection: ServerConnection,
                              request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return response(http.HTTPStatus.OK, "ok\n", "text/plain")
        if path in ("/readyz", "/capacity"):
            cap = await self.capacity()
            if path == "/capacity":
                return json_response(http.HTTPStatus.OK, cap.as_json())
            status, body = readiness(cap, closing=self.closing)
            return json_response(http.HTTPStatus(status), body)
        if path in ("/metrics", "/api/chat"):
            refusal = await self._auth_refusal(connection, request, path)
            if refusal is not None:
                return refusal
        if path == "/metrics":
            return response(http.HTTPStatus.OK, await self.metrics(), CONTENT_TYPE)
        if path == "/api/chat":
            if self.closing:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n",
                                "text/plain")
            return None  # go on with the WebSocket upgrade
        if self.static is not None and request.headers.get("Upgrade") is None:
            found = self.static.lookup(path)
            if found is not None:
                return bytes_response(http.HTTPStatus.OK, found.body, found.content_type,
                                      cache="no-cache")
        return response(http.HTTPStatus.NOT_FOUND, NOT_FOUND, "text/plain")

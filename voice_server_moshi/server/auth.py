"""Bearer-token auth for the front doors: where the token comes from, and a per-address
throttle on wrong guesses that never refuses the right token (:class:`FailureLimiter`).

The token is read from a file (``--auth-token-file``) or the environment
(:data:`AUTH_ENV`); ``--auth-token`` still works but every local user can read it in
``/proc/PID/cmdline``.
"""

from __future__ import annotations

import asyncio
import http
import math
import stat
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from websockets.http11 import Response

from ..moshi.session.server import bearer_authorized
from .responses import response

__all__ = ["AUTH_ENV", "DoorAuth", "FailureLimiter", "Refusal", "TokenError", "address_of",
           "read_token_file", "throttled_response"]

AUTH_ENV = "VOICE_SERVER_MOSHI_AUTH_TOKEN"
#: Tokens shorter than this get a warning (a random 16 characters is ~96 bits or more).
MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """The token file cannot be used."""


def read_token_file(path: str | Path) -> tuple[str, list[str]]:
    """(token, warnings): the file's first line, stripped. Warns when other users may
    read the file."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
        mode = p.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the auth token file {str(p)!r}: {exc}") from None
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise TokenError(f"the auth token file {str(p)!r} is empty")
    warnings = []
    if len(token) < MIN_TOKEN_CHARS:
        warnings.append(f"the token in {str(p)!r} is shorter than {MIN_TOKEN_CHARS} characters: "
                        "a guesser with many connections is stopped by the token's "
                        "strength, not the throttle; use e.g. `openssl rand -hex 32`")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(f"the auth token file {str(p)!r} is readable by other users "
                        f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
    return token, warnings


def address_of(remote: object) -> str:
    """The host part of a peer address (the port changes with every connection)."""
    if isinstance(remote, tuple) and remote:
        return str(remote[0])
    return str(remote)


class FailureLimiter:
    """Throttles wrong tokens per address; never refuses the right one (ADR 0101).

    Every request's token is compared (a constant-time compare costs nothing): the right
    token is let in whatever its address did before, because every call of a voice-server
    host, or of everyone behind one proxy, arrives from one address, and a limit that
    refused the right token there would let one misconfigured worker lock every call out.
    A wrong token from an address with ``max_failures`` failures within ``window_s`` is
    refused with 429 and ``Retry-After`` instead of 401, and the front door holds that
    answer for ``hold_s`` (:meth:`hold`): a guesser that waits for its answers gets one
    per ``hold_s`` per connection instead of thousands per second. At most ``max_held``
    answers are held per address at once (memory and sockets stay bounded; past that
    the 429 goes out at once): a guesser with many connections is bounded by those, and
    the token's strength is what stops it (:func:`read_token_file` warns on a short one).
    At most ``max_addresses`` addresses are tracked (the stalest is forgotten first).
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0,
                 max_addresses: int = 10_000, *, hold_s: float = 1.0,
                 max_held: int = 64) -> None:
        if max_failures < 1 or not window_s > 0 or max_addresses < 1 or max_held < 0:
            raise ValueError("max_failures and max_addresses must be >= 1, window_s > 0, "
                             "max_held >= 0")
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s}")
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.hold_s = hold_s
        self.max_held = max_held
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._held: dict[str, int] = {}
        #: Wrong tokens answered 429.
        self.throttled = 0

    def _recent(self, address: str, now: float) -> deque[float] | None:
        q = self._failures.get(address)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[address]
            return None
        return q

    def retry_after(self, address: str, now: float) -> int | None:
        """Seconds until ``address`` may guess again without a 429, else None."""
        q = self._recent(address, now)
        if q is None or len(q) < self.max_failures:
            return None
        return max(1, math.ceil(q[0] + self.window_s - now))

    def failed(self, address: str, now: float) -> None:
        q = self._recent(address, now)
        if q is None:
            q = self._failures[address] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        q.append(now)

    def check(self, address: str, now: float, authorized: Callable[[], bool]) -> int | None:
        """None: let the request in (the right token always is); 0: refuse it (401);
        > 0: refuse it with 429, retry after that many seconds (an address guessing too
        often). Every wrong token counts, throttled or not."""
        if authorized():
            # The address's failures are kept: a right token from behind the same proxy
            # must not give a guesser there a fresh budget.
            return None
        wait = self.retry_after(address, now)
        self.failed(address, now)
        if wait is None:
            return 0
        self.throttled += 1
        return wait

    async def hold(self, address: str) -> None:
        """Wait ``hold_s`` before a 429 is answered (at once past ``max_held`` per
        address)."""
        held = self._held.get(address, 0)
        if self.hold_s <= 0 or held >= self.max_held:
            return
        self._held[address] = held + 1
        try:
            await asyncio.sleep(self.hold_s)
        finally:
            left = self._held[address] - 1
            if left:
                self._held[address] = left
            else:
                del self._held[address]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a front door refuses a request: 401 (wrong or missing token) or 429 (a wrong
    token from an address guessing too often, with ``retry_after`` seconds)."""

    status: int
    retry_after: int | None = None

    @property
    def text(self) -> str:
        return ("too many failed attempts from this address; retry later\n"
                if self.status == http.HTTPStatus.TOO_MANY_REQUESTS
                else "missing or wrong bearer token\n")


class DoorAuth:
    """One front door's bearer-token check (``serve``, its ingress workers, the cluster's
    ingress): the token offered as :func:`bearer_authorized` reads it, through one
    :class:`FailureLimiter` per process. ``token`` None: every request is let in."""

    def __init__(self, token: str | None, limiter: FailureLimiter | None = None) -> None:
        self.token = token
        self.limiter = limiter or FailureLimiter()

    async def refusal(self, address: str, headers: Mapping[str, str],
                      target: str) -> Refusal | None:
        """None: let the request in; else why not (a 429 is answered after the limiter's
        hold). ``target``: the request's path and query (``?auth_token=`` counts)."""
        token = self.token
        if token is None:
            return None
        verdict = self.limiter.check(address, time.monotonic(),
                                     lambda: bearer_authorized(token, headers, target))
        if verdict is None:
            return None
        if verdict > 0:
            await self.limiter.hold(address)
            return Refusal(http.HTTPStatus.TOO_MANY_REQUESTS, verdict)
        return Refusal(http.HTTPStatus.UNAUTHORIZED)


def throttled_response(retry_after: int) -> Response:
    """``429 Too Many Requests`` with ``Retry-After``."""
    resp = response(http.HTTPStatus.TOO_MANY_REQUESTS,
                    Refusal(http.HTTPStatus.TOO_MANY_REQUESTS).text, "text/plain")
    resp.headers["Retry-After"] = str(retry_after)
    return resp


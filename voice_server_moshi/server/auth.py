"""Bearer-token auth for ``serve``: where the token comes from, how a request offers it,
and a per-address limit on wrong guesses.

The token is read from a file (``--auth-token-file``) or the environment
(:data:`AUTH_ENV`); ``--auth-token`` still works but every local user can read it in
``/proc/PID/cmdline``. An address that fails ``max_failures`` times within ``window_s``
gets ``429 Too Many Requests`` (with ``Retry-After``) until its oldest failure leaves the
window, so guessing runs at ``max_failures / window_s`` per address instead of thousands
per second. Memory is bounded: at most ``max_addresses`` addresses are tracked (the
stalest is forgotten first).
"""

from __future__ import annotations

import http
import math
import stat
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from websockets.http11 import Response

from .responses import response

__all__ = ["AUTH_ENV", "FailureLimiter", "TokenError", "address_of", "read_token_file",
           "throttled_response"]

AUTH_ENV = "VOICE_SERVER_MOSHI_AUTH_TOKEN"


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
    """At most ``max_failures`` failed attempts per address per ``window_s`` seconds."""

    def __init__(self, max_failures: int = 10, window_s: float = 60.0,
                 max_addresses: int = 10_000) -> None:
        if max_failures < 1 or not window_s > 0 or max_addresses < 1:
            raise ValueError("max_failures and max_addresses must be >= 1, window_s > 0")
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        #: Requests answered 429.
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
        """Seconds to wait when ``address`` is throttled now, else None."""
        q = self._recent(address, now)
        if q is None or len(q) < self.max_failures:
            return None
        self.throttled += 1
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

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def check(self, address: str, now: float, authorized: Callable[[], bool]) -> int | None:
        """None: let the request in; 0: refuse it (401), counted as a failure; > 0: the
        address is throttled (429), retry after that many seconds, nothing compared."""
        wait = self.retry_after(address, now)
        if wait is not None:
            return wait
        if authorized():
            return None
        self.failed(address, now)
        return 0


def throttled_response(retry_after: int) -> Response:
    """``429 Too Many Requests`` with ``Retry-After``."""
    resp = response(http.HTTPStatus.TOO_MANY_REQUESTS,
                    "too many failed attempts from this address; retry later\n", "text/plain")
    resp.headers["Retry-After"] = str(retry_after)
    return resp


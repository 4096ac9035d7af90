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

import hmac
import math
import os
import stat
from collections import OrderedDict, deque
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

__all__ = ["AUTH_ENV", "FailureLimiter", "TokenError", "address_of", "offered_tokens",
           "read_token_file", "token_matches"]

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


def offered_tokens(path: str, headers: Headers) -> list[str]:
    """Every token a request offers: ``Authorization: Bearer``, Kyutai's ``kyutai-api-key``
    header, and ``?auth_token=`` (browsers cannot set headers on a WebSocket)."""
    offered: list[str] = []
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        offered.append(auth[7:].strip())
    if "kyutai-api-key" in headers:
        offered.append(headers["kyutai-api-key"])
    offered += parse_qs(urlsplit(path).query).get("auth_token", [])
    return offered


def token_matches(token: str, offered: list[str]) -> bool:
    """Constant-time comparison of each offered token."""
    want = token.encode()
    return any(hmac.compare_digest(o.encode(), want) for o in offered)


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


def env_token() -> str | None:
    return os.environ.get(AUTH_ENV) or None

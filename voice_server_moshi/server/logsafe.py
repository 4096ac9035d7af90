"""Logging for ``serve`` that holds no secret and never breaks a request.

* :func:`redact` removes bearer tokens, ``kyutai-api-key`` values and ``?auth_token=``
  query values from a log line. :class:`RedactingFilter` applies it to stdlib records
  (message, arguments and formatted traceback); :func:`install_redaction` puts it on
  websockets' own loggers, which at DEBUG log every request line and header, and on the
  handlers of the root logger.
* :class:`SafeLogger` wraps a structlog logger so that a log call that raises (stderr
  closed, a dead log collector) is dropped instead of failing the request it describes.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

__all__ = ["RedactingFilter", "SafeLogger", "install_redaction", "redact"]

REDACTED = "<redacted>"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Bearer xyz", "authorization='Bearer xyz'", also Basic and bare values.
    (re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?)(?:(bearer|basic)\s+)?[^\s'\",;)]+"),
     r"\1\2 " + REDACTED),
    (re.compile(r"(?i)(kyutai-api-key['\"]?\s*[:=,]\s*['\"]?)[^\s'\",;)]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)([?&]auth_token=)[^\s&#'\"]*"), r"\1" + REDACTED),
)


def redact(text: str) -> str:
    """``text`` without the secrets the server's requests carry."""
    if not text:
        return text
    low = text.lower()
    if "authorization" not in low and "kyutai-api-key" not in low and "auth_token" not in low:
        return text
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text.replace("  " + REDACTED, " " + REDACTED)


class RedactingFilter(logging.Filter):
    """Redacts each record in place (never drops one)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler's error path
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text, so the traceback is rendered redacted once here.
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()
#: Loggers whose records the server causes: websockets' (request lines, headers) and ours.
OWNED_LOGGERS = ("websockets", "websockets.server", "websockets.client", "websockets.protocol",
                 "voice_server_moshi")


def install_redaction() -> None:
    """Redact on the server's loggers and on every handler of the root logger (which
    sees records propagated from any child logger). Idempotent."""
    for name in OWNED_LOGGERS:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
        for h in lg.handlers:
            if _FILTER not in h.filters:
                h.addFilter(_FILTER)
    for h in logging.getLogger().handlers:
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)


class SafeLogger:
    """A structlog bound logger whose calls never raise."""

    __slots__ = ("_log",)

    def __init__(self, logger: Any) -> None:
        self._log = logger

    def bind(self, **kw: Any) -> SafeLogger:
        try:
            return SafeLogger(self._log.bind(**kw))
        except Exception:
            return self

    def _call(self, method: str, event: str, kw: dict[str, Any]) -> None:
        # A log line must never fail the request it describes.
        with contextlib.suppress(Exception):
            getattr(self._log, method)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._call("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._call("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._call("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._call("error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._call("exception", event, kw)

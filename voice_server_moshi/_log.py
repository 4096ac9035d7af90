"""structlog set-up shared by the package. Library code never prints; it logs.

When the host has configured structlog, its configuration is used as is. Otherwise the
package's lines go through the stdlib ``logging`` module (logger names
``voice_server_moshi.*``), so a host controls level and destination the usual way and
nothing ever lands on stdout, which belongs to the host (and to JSON output of benches).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso"),
    structlog.processors.format_exc_info,
    structlog.dev.ConsoleRenderer(colors=False),
]


_configured_level: str | None = None


def remember_log_level(level: str) -> None:
    """The CLI's chosen level, kept here (not in ``cli``, which may run as ``__main__``)
    so child processes that set up their own logging can follow it."""
    global _configured_level
    _configured_level = level


def configured_log_level() -> str | None:
    """The level the CLI configured in this process; None when it did not."""
    return _configured_level


def get_logger(name: str, **bind: Any) -> Any:
    """A structlog logger for module ``name`` with ``bind`` (e.g. ``call_id``) on every line."""
    if structlog.is_configured():
        logger: Any = structlog.get_logger(name)
    else:
        logger = structlog.wrap_logger(
            logging.getLogger(name),
            processors=_PROCESSORS,
            wrapper_class=structlog.stdlib.BoundLogger,
        )
    return logger.bind(**bind) if bind else logger

"""structlog set-up shared by the package. Library code never prints; it logs."""

from __future__ import annotations

from typing import Any

import structlog


def get_logger(name: str, **bind: Any) -> structlog.stdlib.BoundLogger:
    """A logger for module ``name`` with ``bind`` (e.g. ``call_id``) attached to every line."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger.bind(**bind) if bind else logger

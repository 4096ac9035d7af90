"""The batched server's settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..moshi import protocol
from .limits import CallLimits


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8998
    auth_token: str | None = None
    #: Largest message accepted; an 80 ms Ogg page is a few hundred bytes.
    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    #: How long a new call may wait for a free slot before it is refused.
    admission_wait_s: float = 0.0
    #: Outputs buffered per call when the client reads slowly (oldest dropped).
    max_queued_outputs: int = 150
    instance_name: str = "voice-server-moshi"
    #: A built web client (Kyutai's, or any static UI) served at ``/`` beside the API.
    static_dir: str | None = None
    #: Timeouts, input accounting, message budget, keepalive (ADR 0065).
    limits: CallLimits = field(default_factory=CallLimits)
    #: Wrong tokens allowed per address per window before 429.
    auth_max_failures: int = 10
    auth_window_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.admission_wait_s < 0:
            raise ValueError(f"admission_wait_s must be >= 0, got {self.admission_wait_s}")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token must not be empty when set")
        if self.auth_max_failures < 1 or not self.auth_window_s > 0:
            raise ValueError("auth_max_failures must be >= 1 and auth_window_s > 0")

    def websocket_options(self) -> dict[str, Any]:
        """``websockets.serve`` options of every ``websockets`` front door (``serve``, its
        ingress workers): sizes, keepalive and close timeouts from the call limits."""
        lim = self.limits
        return {
            "compression": None,  # Opus does not compress; deflate would only cost CPU
            "max_size": self.max_message_bytes, "max_queue": 32,
            "ping_interval": lim.ping_interval_s, "ping_timeout": lim.ping_timeout_s,
            "close_timeout": lim.close_timeout_s, "server_header": "voice-server-moshi",
            # Redacted (logsafe.install_redaction): never a token in a log line.
            "logger": logging.getLogger("websockets.server"),
        }

    def __repr__(self) -> str:  # never show the token
        tok = "set" if self.auth_token else "none"
        return (f"ServerConfig(host={self.host!r}, port={self.port}, auth_token={tok}, "
                f"limits={self.limits!r})")

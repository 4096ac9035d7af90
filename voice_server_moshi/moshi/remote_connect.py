"""How the remote transport reaches a server: the URL (with the Rust backend's sampling
query parameters and NVIDIA's persona ones), its redacted form for logs, the TLS context,
and a websockets logger that never logs the bearer token."""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..engine.persona import persona_query
from ..errors import ConnectError
from .settings import MoshiSettings

__all__ = ["WS_LOGGER", "build_url", "redact_url", "ssl_context"]

_SAMPLING_KEYS = (
    "text_temperature",
    "text_topk",
    "audio_temperature",
    "audio_topk",
    "text_seed",
    "audio_seed",
    "pad_mult",
    "repetition_penalty_context",
    "repetition_penalty",
)


def build_url(settings: MoshiSettings) -> str:
    """``settings.url`` with the Rust backend's sampling query parameters that are set.

    Kyutai's Python server ignores query parameters, so adding them is always harmless.
    Parameters already in the URL are kept unless the settings override them.
    """
    if not settings.url:
        raise ConnectError("the remote transport needs moshi.url (ws://host:port/api/chat)")
    parts = urlsplit(settings.url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key in _SAMPLING_KEYS:
        value = getattr(settings, key)
        if value is not None:
            query[key] = str(value)
    # Personas as NVIDIA's PersonaPlex server reads them (and serve, ADR 0130).
    query.update(persona_query(settings.persona, settings.voice, settings.seed))
    return urlunsplit(parts._replace(query=urlencode(query)))


def redact_url(url: str) -> str:
    """The URL without user info, safe to log."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=f"<redacted>@{netloc}"))


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger, minus secrets: at DEBUG it logs every request header, and the
    bearer token must never reach a log."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if len(args) == 2 and str(args[0]).lower() == "authorization":
            args = (args[0], "<redacted>")
        super().log(level, msg, *args, **kwargs)


WS_LOGGER = RedactingLogger(logging.getLogger("websockets.client"), {})


def ssl_context(settings: MoshiSettings, url: str) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    if settings.tls_insecure:
        # Explicit opt-in for Kyutai's Rust servers, which make a self-signed certificate.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx

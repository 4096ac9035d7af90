"""Kyutai's ``/api/chat`` session, sans I/O (the ``websockets`` way): one object per
connection holds the protocol state (handshake, metadata, message kinds, errors, close
codes); it is driven by WebSocket messages in (``receive_data``, ``receive_close``) and
gives events out, plus the messages and close frame to send (``data_to_send``).

:class:`ClientSession` is the caller's half (:mod:`voice_server_moshi.moshi.remote` is its
asyncio shell); :class:`ServerSession` the server's half (``voice-server-moshi serve`` in
:mod:`voice_server_moshi.server.app` is its shell; it does not care which web stack
carries the messages). Message encoding is :mod:`voice_server_moshi.moshi.protocol`.
Audio stays Ogg/Opus bytes here: decoding it is the shell's (media, not protocol).
"""

from .base import KindHandler, Session
from .client import ClientSession
from .events import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_BUSY,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    AudioReceived,
    Closed,
    CloseFrame,
    ErrorReceived,
    HandshakeFailed,
    Ignored,
    MalformedReceived,
    MetadataReceived,
    Opened,
    Outgoing,
    SessionEvent,
    SessionState,
    TextReceived,
    UnknownReceived,
)
from .server import (
    MetadataBuilder,
    QueryError,
    QueryParser,
    ServerSession,
    bearer_authorized,
    query_of,
)

__all__ = [
    "CLOSE_BAD_PAYLOAD",
    "CLOSE_BUSY",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "AudioReceived",
    "ClientSession",
    "CloseFrame",
    "Closed",
    "ErrorReceived",
    "HandshakeFailed",
    "Ignored",
    "KindHandler",
    "MalformedReceived",
    "MetadataBuilder",
    "MetadataReceived",
    "Opened",
    "Outgoing",
    "QueryError",
    "QueryParser",
    "ServerSession",
    "Session",
    "SessionEvent",
    "SessionState",
    "TextReceived",
    "UnknownReceived",
    "bearer_authorized",
    "query_of",
]

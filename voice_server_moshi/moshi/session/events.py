"""What a Kyutai session reports (events) and asks its shell to do (outgoing data).

Events are small frozen dataclasses, all subclasses of :class:`SessionEvent`, so that
extensions (extra message kinds) can define their own and hand them out through the same
``receive_data`` call. Outgoing data is a list of ``bytes`` (one WebSocket binary message
each) and at most one final :class:`CloseFrame`, in the order the shell must send them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .. import protocol

#: WebSocket close codes the sessions use (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
#: Shutdown of the server or an operator draining it.
CLOSE_GOING_AWAY = 1001
#: A payload the receiver cannot use (undecodable audio).
CLOSE_BAD_PAYLOAD = 1007
#: A request the server refuses by policy (bad query parameters).
CLOSE_POLICY = 1008
#: The server failed the call (engine error, send failure).
CLOSE_INTERNAL = 1011
#: "Try again later": a full server. The client half reports it as server busy.
CLOSE_BUSY = 1013


class SessionState(Enum):
    """Where a session is. Both halves go CONNECTING -> OPEN -> CLOSING -> CLOSED; a
    session that fails before OPEN goes straight to CLOSING (its close queued) or CLOSED."""

    #: Client: waiting for the server's handshake. Server: not admitted yet.
    CONNECTING = "connecting"
    OPEN = "open"
    #: A close frame is queued or sent; nothing more is sent, input is ignored.
    CLOSING = "closing"
    #: The connection is gone (:meth:`receive_close` was called).
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class CloseFrame:
    """Outgoing: close the WebSocket with ``code`` and ``reason``; nothing follows it."""

    code: int
    reason: str = ""


Outgoing = bytes | CloseFrame


class SessionEvent:
    """Base class of everything ``receive_data`` / ``receive_close`` report."""

    __slots__ = ()


# -- both halves -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioReceived(SessionEvent):
    """A ``0x01`` message: Ogg/Opus bytes (24 kHz mono) to decode."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TextReceived(SessionEvent):
    """A non-empty ``0x02`` text (or ``0x07`` coloured text) message. From a server: a piece
    of Moshi's inner monologue. From a client: "say this" (an extension; Kyutai's own
    servers ignore it, and so does ``serve`` until a steering extension handles it)."""

    text: str


@dataclass(frozen=True, slots=True)
class MalformedReceived(SessionEvent):
    """A message that breaks the protocol; skipped. ``replied`` (server half): whether a
    ``0x05`` error went back for it."""

    error: protocol.ProtocolError
    replied: bool = False


@dataclass(frozen=True, slots=True)
class UnknownReceived(SessionEvent):
    """A kind byte nobody handles; skipped, as Kyutai's ``protocol.md`` asks."""

    kind: int
    size: int


@dataclass(frozen=True, slots=True)
class Ignored(SessionEvent):
    """A well-formed message with nothing to do in a voice call (ping, control, image,
    codes, a repeated handshake, metadata from a client)."""

    message: protocol.Message


@dataclass(frozen=True, slots=True)
class Closed(SessionEvent):
    """The connection ended. ``clean`` is False when no close frame came (peer vanished)."""

    code: int | None
    reason: str
    clean: bool


# -- client half -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened(SessionEvent):
    """The server's handshake came: the session is open."""

    handshake: protocol.Handshake


@dataclass(frozen=True, slots=True)
class HandshakeFailed(SessionEvent):
    """No session: the server refused, closed, timed out or spoke something else first.

    ``busy`` is True when the server is full (close 1013, a "server busy" error, or a
    withheld handshake); ``detail`` names the peer as ``{peer}``: see :meth:`describe`."""

    detail: str
    busy: bool = False

    def describe(self, peer: str) -> str:
        """The message for a person, with ``peer`` (e.g. the redacted URL) filled in."""
        return self.detail.replace("{peer}", peer)


@dataclass(frozen=True, slots=True)
class MetadataReceived(SessionEvent):
    """A ``0x04`` metadata message (decoded JSON); also kept as ``session.metadata``."""

    value: Any


@dataclass(frozen=True, slots=True)
class ErrorReceived(SessionEvent):
    """A ``0x05`` error message from the server (the call goes on)."""

    message: str

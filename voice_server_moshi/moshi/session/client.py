"""The client half of a Kyutai ``/api/chat`` session, sans I/O.

The first message must be the server's handshake: ``0x00`` alone (Kyutai's Python
``moshi.server``) or ``0x00`` + u32 LE protocol version + u32 LE model version (the Rust
servers, and ``voice-server-moshi serve``). Until it comes the session is CONNECTING and
the ways it can fail are decided here, not in the shell:

* a close with 1013 ("try again later"), a ``0x05`` error starting with "server busy"
  (``serve`` refusing a call) or no handshake within the connect timeout (Kyutai's Python
  server keeps a second caller waiting while it holds its lock): the server is busy;
* any other close, a malformed first message, or another message first: not a session.

Once OPEN, messages become events: audio (Ogg bytes, decoded by the shell), text, the
server's errors, metadata; malformed ones are reported and skipped, unknown kinds skipped
(``protocol.md``: ignore what you do not know), and extension kinds go to their handlers.
"""

from __future__ import annotations

from .. import protocol
from .base import Session
from .events import (
    CLOSE_BUSY,
    CLOSE_NORMAL,
    AudioReceived,
    ErrorReceived,
    HandshakeFailed,
    Ignored,
    MalformedReceived,
    MetadataReceived,
    Opened,
    SessionEvent,
    SessionState,
    TextReceived,
    UnknownReceived,
)

__all__ = ["ClientSession"]


class ClientSession(Session):
    """One connection to a Kyutai-protocol server, seen from the caller's side."""

    def __init__(self, *, max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        self.handshake: protocol.Handshake | None = None
        #: The last ``0x04`` metadata the server sent (None until one comes).
        self.metadata: object = None

    # -- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes | str) -> list[SessionEvent]:
        """One WebSocket message from the server -> what it means."""
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return []
        try:
            msg = self._decode(data)
        except protocol.ProtocolError as exc:
            if self.state is SessionState.CONNECTING:
                return self._fail(f"{{peer}} sent a malformed first message: {exc}")
            self.counters["protocol_errors"] += 1
            return [MalformedReceived(exc)]
        if isinstance(msg, list):  # an extension kind's events
            if self.state is SessionState.CONNECTING:
                return self._fail("{peer} sent an extension message before the handshake; "
                                  "is it a Moshi server?")
            return msg
        if self.state is SessionState.CONNECTING:
            return self._first(msg)
        return self._message(msg)

    def receive_close(self, code: int | None, reason: str = "", *,
                      clean: bool = True) -> list[SessionEvent]:
        if self.state is SessionState.CONNECTING:
            super().receive_close(code, reason, clean=clean)  # -> CLOSED; reported below
            shown = code if code is not None else 1006
            if shown == CLOSE_BUSY:
                return [HandshakeFailed(
                    f"server busy: {{peer}} closed with {CLOSE_BUSY} (try again later)",
                    busy=True)]
            return [HandshakeFailed(
                f"{{peer}} closed the connection before the handshake (code {shown})")]
        return super().receive_close(code, reason, clean=clean)

    def handshake_timed_out(self, timeout_s: float) -> list[SessionEvent]:
        """The shell's connect deadline passed with the socket open but no handshake: a
        Python ``moshi.server`` serving another call. Queues a close."""
        if self.state is not SessionState.CONNECTING:
            return []
        return self._fail(f"server busy: connected but no handshake within {timeout_s:g}s; "
                          "the server is serving another call", busy=True)

    # -- output ------------------------------------------------------------------------

    def send_audio(self, ogg: bytes) -> bool:
        """Queue Ogg/Opus bytes as a ``0x01`` message; False (dropped) unless open."""
        if not ogg:
            return False
        return self.send_message(protocol.Audio(ogg))

    def send_text(self, text: str) -> bool:
        """Queue a ``0x02`` text message ("say this"; only servers with a steering
        extension act on it). False (dropped) unless open."""
        return self.send_message(protocol.Text(text))

    # -- internals ---------------------------------------------------------------------

    def _fail(self, detail: str, *, busy: bool = False) -> list[SessionEvent]:
        self.close(CLOSE_NORMAL)
        return [HandshakeFailed(detail, busy=busy)]

    def _first(self, msg: protocol.Message) -> list[SessionEvent]:
        if isinstance(msg, protocol.ErrorMessage) and msg.message.lower().startswith(
            "server busy"
        ):
            # voice-server-moshi serve refuses a call with this error before any handshake.
            return self._fail(f"{{peer}}: {msg.message}", busy=True)
        if not isinstance(msg, protocol.Handshake):
            return self._fail(f"{{peer}} sent {type(msg).__name__} before the handshake; "
                              "is it a Moshi server?")
        self.handshake = msg
        self.state = SessionState.OPEN
        return [Opened(msg)]

    def _message(self, msg: protocol.Message) -> list[SessionEvent]:
        match msg:
            case protocol.Audio(data=ogg):
                return [AudioReceived(ogg)]
            case protocol.Text(text=t) | protocol.ColoredText(text=t):
                return [TextReceived(t)] if t else []
            case protocol.ErrorMessage(message=m):
                return [ErrorReceived(m)]
            case protocol.Metadata(value=v):
                self.metadata = v
                return [MetadataReceived(v)]
            case protocol.UnknownMessage(kind=k, payload=payload):
                self.counters["unknown_messages"] += 1
                return [UnknownReceived(k, len(payload))]
        # Ping, Control, Image, Codes, a repeated handshake: nothing to do in a voice call.
        return [Ignored(msg)]

"""What both halves of a Kyutai session share: the outbox, the state, the counters, the
close, and extra message kinds registered by extensions."""

from __future__ import annotations

from collections.abc import Callable

from .. import protocol
from .events import (
    CLOSE_NORMAL,
    Closed,
    CloseFrame,
    Outgoing,
    SessionEvent,
    SessionState,
)

#: An extension's handler for one extra kind byte: given the payload (the bytes after the
#: kind byte), it returns the events to report (its own :class:`SessionEvent` subclasses);
#: it may queue replies on the session it was registered on (``send_raw``). It raises
#: :class:`~voice_server_moshi.moshi.protocol.ProtocolError` for a malformed payload,
#: which the session then treats like any malformed message.
KindHandler = Callable[[bytes], list[SessionEvent]]


class Session:
    """Sans-I/O: the shell feeds :meth:`receive_data` each WebSocket message and
    :meth:`receive_close` when the connection ends, then sends :meth:`data_to_send`."""

    def __init__(self, *, max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self.state = SessionState.CONNECTING
        self.close_code: int | None = None
        self.close_reason = ""
        self._outbox: list[Outgoing] = []
        self._kinds: dict[int, KindHandler] = {}
        #: Per connection: messages in and out, malformed and unknown messages skipped.
        self.counters: dict[str, int] = {
            "messages_in": 0,
            "messages_out": 0,
            "unknown_messages": 0,
            "protocol_errors": 0,
        }

    # -- extension point ---------------------------------------------------------------

    def register_kind(self, kind: int, handler: KindHandler) -> None:
        """Handle messages of ``kind`` with ``handler`` (extensions: steering 0x40-0x4F,
        caller transcript 0x50-0x5F). The protocol's own kinds cannot be taken over,
        except ``0x02`` text on the server half (client "say this")."""
        if not 0 <= kind <= 255:
            raise ValueError(f"a kind is one byte, got {kind}")
        if kind in self._kinds:
            raise ValueError(f"kind 0x{kind:02x} already has a handler")
        if kind in {int(k) for k in protocol.Kind} and not self._may_handle(kind):
            raise ValueError(f"kind 0x{kind:02x} is the protocol's own")
        self._kinds[kind] = handler

    def _may_handle(self, kind: int) -> bool:
        return False

    # -- I/O boundary ------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.state is SessionState.OPEN

    def data_to_send(self) -> list[Outgoing]:
        """What to send now, in order: binary messages, then possibly one close frame.
        Each call returns what was queued since the last one."""
        out, self._outbox = self._outbox, []
        return out

    def receive_close(self, code: int | None, reason: str = "", *,
                      clean: bool = True) -> list[SessionEvent]:
        """The connection ended (close frame received, or lost when ``clean`` is False)."""
        if self.state is SessionState.CLOSED:
            return []
        self.state = SessionState.CLOSED
        self.close_code, self.close_reason = code, reason
        self._outbox.clear()  # nothing can be sent any more
        return [Closed(code, reason, clean)]

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Queue a close frame; afterwards nothing more is sent. Idempotent."""
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        self.state = SessionState.CLOSING
        self.close_code, self.close_reason = code, reason
        self._outbox.append(CloseFrame(code, reason))

    def send_message(self, message: protocol.Message) -> bool:
        """Queue any protocol message while open; False (dropped) when not open."""
        if self.state is not SessionState.OPEN:
            return False
        self._queue(protocol.encode(message))
        return True

    def send_raw(self, kind: int, payload: bytes) -> bool:
        """Queue a message of an extension kind (``kind`` byte + ``payload``) while open."""
        if self.state is not SessionState.OPEN:
            return False
        self._queue(bytes((kind,)) + payload)
        return True

    # -- internals ---------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self._outbox.append(data)
        self.counters["messages_out"] += 1

    def _decode(self, data: bytes | str) -> protocol.Message | list[SessionEvent]:
        """One message in: its decoded form, or the events of an extension kind. Raises
        ProtocolError. A text frame is not part of Kyutai's protocol; its bytes go to the
        codec, which reports it as whatever its first byte says."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self.counters["messages_in"] += 1
        if raw and raw[0] in self._kinds:
            if len(raw) > self.max_message_bytes:
                # The codec words the size error the same way for every kind.
                protocol.decode(raw, max_size=self.max_message_bytes)
            return self._kinds[raw[0]](raw[1:])
        return protocol.decode(raw, max_size=self.max_message_bytes)

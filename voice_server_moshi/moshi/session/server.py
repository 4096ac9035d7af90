"""The server half of a Kyutai ``/api/chat`` session, sans I/O, whatever carries the bytes.

One :class:`ServerSession` per connection. The shell (``voice-server-moshi serve`` on
``websockets``, or an ASGI app) does only I/O: it feeds each WebSocket message to
:meth:`ServerSession.receive_data`, acts on the events, and sends
:meth:`~.base.Session.data_to_send` in order. The lifecycle, all decided here:

1. :meth:`~ServerSession.accept` with the request's query string, before a slot is taken:
   the ``query_parser`` validates per-call parameters (a bad one: ``0x05`` error, close
   1008, no slot spent); the result is ``session.params``.
2. Either :meth:`~ServerSession.refuse_busy` (``0x05`` "server busy: ...", close 1013,
   never a silent wait), or :meth:`~ServerSession.start`: the Rust servers' 9-byte
   handshake (``0x00`` + two u32 LE zeros), then ``0x04`` metadata from the
   ``metadata_builder``.
3. OPEN: client ``0x01`` audio arrives as :class:`~.events.AudioReceived` (Ogg bytes the
   shell decodes; undecodable audio: :meth:`~ServerSession.reject_audio`, close 1007),
   ``0x02`` text as :class:`~.events.TextReceived` (client "say this"); outputs go out
   with :meth:`~ServerSession.send_audio` / ``send_text`` / ``send_error``. A malformed
   message gets a ``0x05`` reply (up to ``max_malformed_replies``) and the call goes on;
   unknown kinds are skipped; control, ping and the like are ignored.
4. The end: :meth:`~ServerSession.fail` (error, close 1011), ``close(code, reason)``
   (operator, shutdown 1001), or the client's close (:meth:`~.base.Session.receive_close`).

Extension points (documented where they are): ``query_parser`` (per-call parameters at
open), ``metadata_builder`` (the ``0x04`` JSON), :meth:`~.base.Session.register_kind`
(extra client kinds, e.g. steering 0x40-0x4F, or taking over ``0x02``),
``max_malformed_replies`` and ``counters`` (malformed input accounting), and
:func:`bearer_authorized` for the HTTP layer of any web stack.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from .. import protocol
from .base import Session
from .events import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_BUSY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    AudioReceived,
    Ignored,
    MalformedReceived,
    SessionEvent,
    SessionState,
    TextReceived,
    UnknownReceived,
)

__all__ = [
    "MetadataBuilder",
    "QueryError",
    "QueryParser",
    "ServerSession",
    "bearer_authorized",
    "query_of",
]

#: The handshake ``serve`` sends: the Rust servers' 9-byte form, versions 0 and 0.
SERVER_HANDSHAKE = protocol.Handshake(0, 0)


class QueryError(ValueError):
    """A query parameter the server refuses; the message is shown to the client."""


#: Per-call parameters at open: the query (name -> last value) in, what the call uses out
#: (``session.params``). Raise :class:`QueryError` to refuse the call before a slot is
#: taken. The default keeps nothing: Kyutai's Python server ignores query parameters too.
QueryParser = Callable[[Mapping[str, str]], Mapping[str, Any]]
#: The ``0x04`` metadata JSON object, built when the session starts (``session.params`` is
#: known then). Extensions add their own keys (e.g. ``"steering": true``).
MetadataBuilder = Callable[["ServerSession"], Mapping[str, Any]]


def query_of(target: str) -> dict[str, str]:
    """The query parameters of a request target (``/api/chat?a=1&b=2``), last value wins."""
    return dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))


def bearer_authorized(token: str | None, headers: Mapping[str, str], target: str) -> bool:
    """Whether a request may use ``/api/chat`` (and ``/metrics``): no token configured, or
    the token offered as ``Authorization: Bearer``, as ``kyutai-api-key`` (the header
    Kyutai's Rust server reads) or as ``?auth_token=`` (browsers cannot set headers on a
    WebSocket). ``headers`` must look names up case-insensitively."""
    if token is None:
        return True
    offered: list[str] = []
    auth = headers.get("Authorization", "") or ""
    if auth.lower().startswith("bearer "):
        offered.append(auth[7:].strip())
    key = headers.get("kyutai-api-key")
    if key is not None:
        offered.append(key)
    offered += parse_qs(urlsplit(target).query).get("auth_token", [])
    return any(hmac.compare_digest(o.encode(), token.encode()) for o in offered)


def _no_params(query: Mapping[str, str]) -> Mapping[str, Any]:
    return {}


def _no_metadata(session: ServerSession) -> Mapping[str, Any]:
    return {}


class ServerSession(Session):
    """One client connection to a Kyutai-protocol server."""

    def __init__(
        self,
        *,
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
        query_parser: QueryParser | None = None,
        metadata_builder: MetadataBuilder | None = None,
        max_malformed_replies: int | None = None,
    ) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        if max_malformed_replies is not None and max_malformed_replies < 0:
            raise ValueError(f"max_malformed_replies must be >= 0, got {max_malformed_replies}")
        self.query_parser = query_parser or _no_params
        self.metadata_builder = metadata_builder or _no_metadata
        #: A ``0x05`` reply goes back for the first N malformed messages (None: all).
        self.max_malformed_replies = max_malformed_replies
        #: What ``query_parser`` made of the query at :meth:`accept`.
        self.params: Mapping[str, Any] = {}
        self.counters["malformed_replies"] = 0
        self.counters["audio_messages_in"] = 0
        self.counters["audio_bytes_in"] = 0

    def _may_handle(self, kind: int) -> bool:
        return kind == protocol.Kind.TEXT  # client text is ours to define ("say this")

    # -- open --------------------------------------------------------------------------

    def accept(self, query: Mapping[str, str] | str = "") -> bool:
        """Validate the request's query parameters (a mapping, or a request target such as
        ``/api/chat?x=1``). False: refused, with a ``0x05`` error and close 1008 queued."""
        if self.state is not SessionState.CONNECTING:
            raise RuntimeError(f"accept() on a session that is {self.state.value}")
        q = query_of(query) if isinstance(query, str) else dict(query)
        try:
            self.params = dict(self.query_parser(q))
        except QueryError as exc:
            self.refuse_bad_request(str(exc))
            return False
        return True

    def refuse_bad_request(self, detail: str) -> None:
        """A request the server cannot serve (a bad query parameter, or one the engine
        refused at admission, e.g. an unknown voice): ``0x05`` "bad request: <detail>",
        then close 1008."""
        if self.state is not SessionState.CONNECTING:
            raise RuntimeError(f"refuse_bad_request() on a session that is {self.state.value}")
        self._queue(protocol.encode(protocol.ErrorMessage(f"bad request: {detail}")))
        self.close(CLOSE_POLICY, "bad request")

    def refuse_busy(self, detail: str) -> None:
        """No free capacity: ``0x05`` "server busy: <detail>", then close 1013."""
        if self.state is not SessionState.CONNECTING:
            raise RuntimeError(f"refuse_busy() on a session that is {self.state.value}")
        self._queue(protocol.encode(protocol.ErrorMessage(f"server busy: {detail}")))
        self.close(CLOSE_BUSY, "server busy")

    def start(self) -> None:
        """Admitted: queue the handshake and the metadata; the session is OPEN."""
        if self.state is not SessionState.CONNECTING:
            raise RuntimeError(f"start() on a session that is {self.state.value}")
        self.state = SessionState.OPEN
        self.send_message(SERVER_HANDSHAKE)
        self.send_message(protocol.Metadata(self.build_metadata()))

    def build_metadata(self) -> dict[str, Any]:
        """The ``0x04`` JSON object (from ``metadata_builder``)."""
        return dict(self.metadata_builder(self))

    # -- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes | str) -> list[SessionEvent]:
        """One WebSocket message from the client -> what it means. Ignored unless open."""
        if self.state is not SessionState.OPEN:
            return []
        try:
            msg = self._decode(data)
        except protocol.ProtocolError as exc:
            return [self._malformed(exc)]
        if isinstance(msg, list):  # an extension kind's events
            return msg
        match msg:
            case protocol.Audio(data=ogg):
                self.counters["audio_messages_in"] += 1
                self.counters["audio_bytes_in"] += len(ogg)
                return [AudioReceived(ogg)]
            case protocol.Text(text=t):
                return [TextReceived(t)] if t else []
            case protocol.UnknownMessage(kind=k, payload=payload):
                self.counters["unknown_messages"] += 1
                return [UnknownReceived(k, len(payload))]
        # Control, ping, metadata and the like: nothing to do in a full-duplex call
        # (protocol.md: discard what you do not use).
        return [Ignored(msg)]

    def _malformed(self, exc: protocol.ProtocolError) -> MalformedReceived:
        self.counters["protocol_errors"] += 1
        limit = self.max_malformed_replies
        reply = limit is None or self.counters["malformed_replies"] < limit
        if reply:
            self.counters["malformed_replies"] += 1
            self.send_error(f"malformed message: {exc}")
        return MalformedReceived(exc, replied=reply)

    # -- output ------------------------------------------------------------------------

    def send_audio(self, ogg: bytes) -> bool:
        """Queue agent Ogg/Opus bytes (``0x01``); False when empty or not open."""
        if not ogg:
            return False
        return self.send_message(protocol.Audio(ogg))

    def send_text(self, text: str) -> bool:
        """Queue a piece of the agent's text (``0x02``); False when empty or not open."""
        if not text:
            return False
        return self.send_message(protocol.Text(text))

    def send_error(self, message: str) -> bool:
        """Queue a ``0x05`` error; the call goes on."""
        return self.send_message(protocol.ErrorMessage(message))

    def fail(self, message: str, *, code: int = CLOSE_INTERNAL,
             reason: str = "server error") -> None:
        """End the call for a server-side failure: ``0x05`` ``message``, then close."""
        self.send_error(message)
        self.close(code, reason)

    def reject_audio(self, detail: str) -> None:
        """The client's audio does not decode: error, then close 1007 (bad payload)."""
        self.counters["protocol_errors"] += 1
        self.fail(f"invalid Ogg/Opus audio (24 kHz mono expected): {detail}",
                  code=CLOSE_BAD_PAYLOAD, reason="invalid Ogg/Opus audio")

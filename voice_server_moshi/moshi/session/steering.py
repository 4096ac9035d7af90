"""The steering extension of a Kyutai session, both halves, sans I/O (docs/protocol.md).

Server half (:class:`ServerSteering`, installed on a :class:`~.server.ServerSession`):
client ``0x02`` text, ``0x41`` say-audio and ``0x42`` cancel become
:class:`SayTextRequested` / :class:`SayAudioRequested` / :class:`CancelRequested` events for
the shell to act on; :meth:`ServerSteering.update` queues the ``0x40`` answers; the
``0x04`` metadata says ``"steering": true``.

Client half (:class:`ClientSteering`, on a :class:`~.client.ClientSession`): the say and
cancel messages out (each say request's id is known when it is sent: ``say-<seq>``), and
``0x40`` updates in as :class:`SteerUpdateReceived`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from .. import protocol
from ..steering_protocol import (
    CANCEL,
    METADATA_KEY,
    SAY_AUDIO,
    STEER_UPDATE,
    CancelMessage,
    SayAudioMessage,
    SteerUpdateMessage,
    UpdateStatus,
    decode_steering,
    encode_steering,
    request_id,
)
from .client import ClientSession
from .events import SessionEvent
from .server import ServerSession

__all__ = [
    "CancelRequested",
    "ClientSteering",
    "SayAudioRequested",
    "SayTextRequested",
    "ServerSteering",
    "SteerUpdateReceived",
]


@dataclass(frozen=True, slots=True)
class SayTextRequested(SessionEvent):
    """The client asks the agent to say ``text`` (``0x02``)."""

    request_id: str
    text: str


@dataclass(frozen=True, slots=True)
class SayAudioRequested(SessionEvent):
    """The client asks the agent to say this 24 kHz 16-bit LE mono audio (``0x41``)."""

    request_id: str
    text: str
    pcm: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CancelRequested(SessionEvent):
    """The client cancels what is being said (``0x42``); ``flush`` drops the queue too."""

    flush: bool


@dataclass(frozen=True, slots=True)
class SteerUpdateReceived(SessionEvent):
    """A ``0x40`` steering update from the server."""

    request_id: str
    status: UpdateStatus
    message: str = ""


#: session -> its steering. The value is a weak reference too: a ServerSteering holds its
#: session, so a strong value would keep every session (and its call's state) alive for
#: the life of the process (found by the protocol fuzz: one per connection).
_installed: weakref.WeakKeyDictionary[ServerSession, weakref.ref[ServerSteering]] = (
    weakref.WeakKeyDictionary())


class ServerSteering:
    """Steering on one server connection. Install before :meth:`ServerSession.start`."""

    def __init__(self, session: ServerSession) -> None:
        self.session = session
        self.seq = 0
        _installed[session] = weakref.ref(self)
        session.register_kind(protocol.Kind.TEXT, self._say_text)
        session.register_kind(SAY_AUDIO, self._say_audio)
        session.register_kind(CANCEL, self._cancel)
        base = session.metadata_builder
        session.metadata_builder = lambda s: {**base(s), METADATA_KEY: True}

    @staticmethod
    def of(session: ServerSession) -> ServerSteering | None:
        """The steering installed on ``session``, if any."""
        ref = _installed.get(session)
        return None if ref is None else ref()

    def update(self, rid: str, status: UpdateStatus, message: str = "") -> bool:
        """Queue a ``0x40`` update for request ``rid`` (``say-<seq>``)."""
        seq = int(rid.rpartition("-")[2]) if rid.rpartition("-")[2].isdigit() else 0
        return self.session.send_raw(
            STEER_UPDATE, encode_steering(SteerUpdateMessage(rid, seq, status, message))[1:])

    def _next(self) -> str:
        self.seq += 1
        return request_id(self.seq)

    def _say_text(self, payload: bytes) -> list[SessionEvent]:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise protocol.InvalidUtf8Error(
                f"say-text message (kind 0x02) is not valid UTF-8: {exc.reason}",
                kind=protocol.Kind.TEXT) from None
        rid = self._next()
        if not text.strip():
            self.update(rid, "failed", "nothing to say: empty text")
            return []
        return [SayTextRequested(rid, text)]

    def _say_audio(self, payload: bytes) -> list[SessionEvent]:
        msg = decode_steering(SAY_AUDIO, payload)
        assert isinstance(msg, SayAudioMessage)
        return [SayAudioRequested(self._next(), msg.text, msg.pcm)]

    def _cancel(self, payload: bytes) -> list[SessionEvent]:
        msg = decode_steering(CANCEL, payload)
        assert isinstance(msg, CancelMessage)
        return [CancelRequested(msg.flush)]


class ClientSteering:
    """Steering on one client connection (a server that advertises it)."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.seq = 0
        session.register_kind(STEER_UPDATE, self._update)

    @property
    def available(self) -> bool:
        """The server said ``"steering": true`` in its metadata."""
        meta = self.session.metadata
        return isinstance(meta, dict) and meta.get(METADATA_KEY) is True

    def say_text(self, text: str) -> str | None:
        """Queue ``0x02`` text; its request id, or None when the session is not open."""
        if not self.session.send_text(text):
            return None
        self.seq += 1
        return request_id(self.seq)

    def say_audio(self, pcm16: bytes, text: str) -> str | None:
        """Queue ``0x41`` (24 kHz 16-bit LE mono); its request id, or None when not open."""
        data = encode_steering(SayAudioMessage(text, pcm16))
        if not self.session.send_raw(data[0], data[1:]):
            return None
        self.seq += 1
        return request_id(self.seq)

    def cancel(self, flush: bool = True) -> bool:
        data = encode_steering(CancelMessage(flush))
        return self.session.send_raw(data[0], data[1:])

    def _update(self, payload: bytes) -> list[SessionEvent]:
        msg = decode_steering(STEER_UPDATE, payload)
        assert isinstance(msg, SteerUpdateMessage)
        return [SteerUpdateReceived(msg.request_id, msg.status, msg.message)]

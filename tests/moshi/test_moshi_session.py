"""The sans-I/O Kyutai session, driven with byte strings only: no socket, no event loop."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_server_moshi.moshi import protocol
from voice_server_moshi.moshi.session import (
    AudioReceived,
    ClientSession,
    Closed,
    CloseFrame,
    ErrorReceived,
    HandshakeFailed,
    Ignored,
    MalformedReceived,
    MetadataReceived,
    Opened,
    QueryError,
    ServerSession,
    SessionEvent,
    SessionState,
    TextReceived,
    UnknownReceived,
    bearer_authorized,
)

RUST_HANDSHAKE = b"\x00" + struct.pack("<II", 0, 3)


def _open_client() -> ClientSession:
    c = ClientSession()
    assert c.receive_data(b"\x00") == [Opened(protocol.Handshake())]
    return c


def _open_server(**kw: object) -> ServerSession:
    s = ServerSession(**kw)  # type: ignore[arg-type]
    assert s.accept("/api/chat")
    s.start()
    s.data_to_send()
    return s


# -- client: the handshake ------------------------------------------------------------


def test_client_opens_on_either_handshake() -> None:
    c = ClientSession()
    assert c.state is SessionState.CONNECTING and not c.open
    assert c.receive_data(RUST_HANDSHAKE) == [Opened(protocol.Handshake(0, 3))]
    assert c.open and c.handshake == protocol.Handshake(0, 3)
    assert c.data_to_send() == []
    assert _open_client().handshake == protocol.Handshake()


@pytest.mark.parametrize(
    ("first", "busy", "text"),
    [
        (b"\x00\x01\x02\x03\x04", False, "{peer} sent a malformed first message: handshake of 5"),
        (b"\x02 hi", False, "{peer} sent Text before the handshake; is it a Moshi server?"),
        (b"\x05server busy: all 4 slots", True, "{peer}: server busy: all 4 slots"),
        (b"\x05overloaded", False, "{peer} sent ErrorMessage before the handshake"),
        (b"", False, "{peer} sent a malformed first message: empty message"),
    ],
)
def test_client_handshake_failures(first: bytes, busy: bool, text: str) -> None:
    c = ClientSession()
    [ev] = c.receive_data(first)
    assert isinstance(ev, HandshakeFailed) and ev.busy is busy
    assert ev.detail.startswith(text)
    assert ev.describe("ws://h/api/chat").startswith(text.replace("{peer}", "ws://h/api/chat"))
    # The session closes (1000) and ignores anything after.
    assert c.state is SessionState.CLOSING and c.data_to_send() == [CloseFrame(1000)]
    assert c.receive_data(b"\x00") == [] and c.handshake is None


def test_client_closed_or_timed_out_before_the_handshake() -> None:
    busy = ClientSession().receive_close(1013, "try later")
    assert busy == [HandshakeFailed(
        "server busy: {peer} closed with 1013 (try again later)", busy=True)]
    [other] = ClientSession().receive_close(1011, "internal error")
    assert isinstance(other, HandshakeFailed) and not other.busy
    assert other.describe("P") == "P closed the connection before the handshake (code 1011)"
    [lost] = ClientSession().receive_close(None, clean=False)
    assert isinstance(lost, HandshakeFailed) and "(code 1006)" in lost.detail
    c = ClientSession()
    [timed] = c.handshake_timed_out(2.0)
    assert isinstance(timed, HandshakeFailed) and timed.busy
    assert "no handshake within 2s" in timed.detail
    assert c.data_to_send() == [CloseFrame(1000)]
    assert _open_client().handshake_timed_out(2.0) == []


# -- client: an open session ----------------------------------------------------------


def test_client_every_kind_on_the_wire() -> None:
    c = _open_client()
    got: list[SessionEvent] = []
    for m in [b'\x04{"instance_name":"r1"}', b"\x0a\x01\x02", b"\x02\xff\xfe", b"\x06",
              b"\x03\x01", b"\x02 hi", b"\x02", b"\x07\x01 there", b"\x05overloaded",
              b"\x01OggS...", RUST_HANDSHAKE]:
        got += c.receive_data(m)
    assert [type(e).__name__ for e in got] == [
        "MetadataReceived", "UnknownReceived", "MalformedReceived", "Ignored", "Ignored",
        "TextReceived", "TextReceived", "ErrorReceived", "AudioReceived", "Ignored",
    ]
    assert got[0] == MetadataReceived({"instance_name": "r1"})
    assert c.metadata == {"instance_name": "r1"}
    assert got[1] == UnknownReceived(0x0A, 2)
    assert isinstance(got[2], MalformedReceived) and "UTF-8" in str(got[2].error)
    assert [e.text for e in got if isinstance(e, TextReceived)] == [" hi", " there"]
    assert got[7] == ErrorReceived("overloaded")
    assert got[8] == AudioReceived(b"OggS...")
    assert got[9] == Ignored(protocol.Handshake(0, 3))
    assert c.counters == {"messages_in": 12, "messages_out": 0, "unknown_messages": 1,
                          "protocol_errors": 1}


def test_client_sends_only_while_open_and_closes_once() -> None:
    c = ClientSession()
    assert not c.send_audio(b"OggS") and c.data_to_send() == []
    c.receive_data(b"\x00")
    assert c.send_audio(b"OggS") and not c.send_audio(b"")
    assert c.send_text("say hi")
    c.close(1000, "bye")
    c.close(1001, "again")  # idempotent
    assert not c.send_audio(b"OggS")
    assert c.data_to_send() == [b"\x01OggS", b"\x02say hi", CloseFrame(1000, "bye")]
    assert c.counters["messages_out"] == 2
    assert c.receive_data(b"\x02 late") == []  # closing: input ignored
    assert c.receive_close(1000, "bye") == [Closed(1000, "bye", True)]
    assert c.state is SessionState.CLOSED and c.receive_close(1000) == []


def test_client_reports_the_peer_closing() -> None:
    c = _open_client()
    c.send_audio(b"OggS")
    assert c.receive_close(1011, "bye") == [Closed(1011, "bye", True)]
    assert c.data_to_send() == []  # nothing can be sent on a closed connection
    assert _open_client().receive_close(1006, "lost", clean=False) == [
        Closed(1006, "lost", False)]


def test_a_text_frame_goes_to_the_codec_as_its_bytes() -> None:
    c = _open_client()
    assert c.receive_data("\x02 hi") == [TextReceived(" hi")]


# -- extension kinds ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerSaid(SessionEvent):
    text: str


def test_extension_kinds_are_handled_by_their_handler() -> None:
    c = _open_client()

    def transcript(payload: bytes) -> list[SessionEvent]:
        if not payload:
            raise protocol.TruncatedMessageError("empty transcript", kind=0x50)
        return [CallerSaid(payload.decode())]

    c.register_kind(0x50, transcript)
    assert c.receive_data(b"\x50hello") == [CallerSaid("hello")]
    [bad] = c.receive_data(b"\x50")
    assert isinstance(bad, MalformedReceived) and c.counters["protocol_errors"] == 1
    with pytest.raises(ValueError, match="already has a handler"):
        c.register_kind(0x50, transcript)
    with pytest.raises(ValueError, match="protocol's own"):
        c.register_kind(0x02, transcript)
    with pytest.raises(ValueError, match="one byte"):
        c.register_kind(256, transcript)
    oversized = ClientSession(max_message_bytes=8)
    oversized.receive_data(b"\x00")
    oversized.register_kind(0x50, transcript)
    [big] = oversized.receive_data(b"\x50" + b"x" * 8)
    assert isinstance(big, MalformedReceived)
    assert isinstance(big.error, protocol.OversizedMessageError)


def test_the_server_may_take_over_client_text() -> None:
    s = _open_server()
    said: list[bytes] = []

    def say(payload: bytes) -> list[SessionEvent]:
        said.append(payload)
        s.send_raw(0x40, b"ack")
        return []

    s.register_kind(0x02, say)
    assert s.receive_data(b"\x02hello") == []
    assert said == [b"hello"] and s.data_to_send() == [b"\x40ack"]


# -- server ---------------------------------------------------------------------------


def test_server_start_sends_the_rust_handshake_then_metadata() -> None:
    s = ServerSession(metadata_builder=lambda sess: {"server": "x", "lang": sess.params["lang"]},
                      query_parser=lambda q: {"lang": q.get("lang", "en")})
    assert s.accept("/api/chat?lang=fr&auth_token=t")
    assert s.params == {"lang": "fr"}
    assert s.data_to_send() == []  # nothing is sent before admission
    s.start()
    hs, meta = s.data_to_send()
    assert hs == b"\x00" + struct.pack("<II", 0, 0)
    assert meta[:1] == b"\x04" and json.loads(meta[1:]) == {"server": "x", "lang": "fr"}
    assert s.open
    with pytest.raises(RuntimeError, match="start"):
        s.start()


def test_server_refuses_bad_parameters_before_a_slot() -> None:
    def parse(q: object) -> dict[str, object]:
        raise QueryError("text_temperature must be a number, got 'hot'")

    s = ServerSession(query_parser=parse)  # type: ignore[arg-type]
    assert not s.accept({"text_temperature": "hot"})
    assert s.data_to_send() == [
        b"\x05bad request: text_temperature must be a number, got 'hot'",
        CloseFrame(1008, "bad request"),
    ]
    assert s.state is SessionState.CLOSING


def test_server_refuses_when_busy() -> None:
    s = ServerSession()
    assert s.accept()
    s.refuse_busy("all 4 engine slots are busy")
    assert s.data_to_send() == [b"\x05server busy: all 4 engine slots are busy",
                                CloseFrame(1013, "server busy")]
    with pytest.raises(RuntimeError):
        s.start()


def test_server_input_while_open() -> None:
    s = ServerSession()
    s.accept()
    assert s.receive_data(b"\x01OggS") == []  # not started: ignored
    s.start()
    s.data_to_send()
    assert s.receive_data(b"\x01OggS") == [AudioReceived(b"OggS")]
    assert s.receive_data(b"\x02say hi") == [TextReceived("say hi")]
    assert s.receive_data(b"\x02") == []
    assert s.receive_data(b"\x44\x00") == [UnknownReceived(0x44, 1)]
    assert s.receive_data(b"\x06") == [Ignored(protocol.Ping())]
    assert s.data_to_send() == []
    assert s.counters["audio_messages_in"] == 1 and s.counters["audio_bytes_in"] == 4


def test_server_answers_malformed_messages_up_to_a_limit() -> None:
    s = _open_server(max_malformed_replies=2)
    events = [e for m in (b"", b"\x03\x09", b"\x04{", b"\x01ok") for e in s.receive_data(m)]
    assert [type(e).__name__ for e in events] == ["MalformedReceived"] * 3 + ["AudioReceived"]
    assert [e.replied for e in events if isinstance(e, MalformedReceived)] == [True, True, False]
    out = s.data_to_send()
    assert len(out) == 2 and all(isinstance(m, bytes) and m.startswith(b"\x05malformed message: ")
                                 for m in out)
    assert s.counters["protocol_errors"] == 3 and s.counters["malformed_replies"] == 2
    assert s.open  # the call goes on
    with pytest.raises(ValueError):
        ServerSession(max_malformed_replies=-1)


def test_server_outputs_and_endings() -> None:
    s = _open_server()
    assert s.send_audio(b"OggS") and not s.send_audio(b"")
    assert s.send_text(" hel") and not s.send_text("")
    s.fail("engine tick failed", reason="engine error")
    assert not s.send_audio(b"OggS")
    assert s.data_to_send() == [b"\x01OggS", b"\x02 hel", b"\x05engine tick failed",
                                CloseFrame(1011, "engine error")]
    r = _open_server()
    r.reject_audio("not an ogg page")
    assert r.data_to_send() == [
        b"\x05invalid Ogg/Opus audio (24 kHz mono expected): not an ogg page",
        CloseFrame(1007, "invalid Ogg/Opus audio"),
    ]
    g = _open_server()
    g.close(1001, "server shutting down")
    assert g.data_to_send() == [CloseFrame(1001, "server shutting down")]
    assert g.receive_close(1001, "server shutting down") == [
        Closed(1001, "server shutting down", True)]


def test_bearer_authorized() -> None:
    assert bearer_authorized(None, {}, "/api/chat")
    assert not bearer_authorized("s3cret", {}, "/api/chat")
    assert bearer_authorized("s3cret", {"Authorization": "Bearer s3cret"}, "/api/chat")
    assert not bearer_authorized("s3cret", {"Authorization": "Bearer wrong"}, "/api/chat")
    assert bearer_authorized("s3cret", {"kyutai-api-key": "s3cret"}, "/api/chat")
    assert bearer_authorized("s3cret", {}, "/api/chat?auth_token=s3cret")
    assert not bearer_authorized("s3cret", {}, "/api/chat?auth_token=s3cre")


# -- properties: any bytes ------------------------------------------------------------

ANY_MESSAGE = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda k, p: bytes((k,)) + p, st.integers(0, 0x0A), st.binary(max_size=16)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ANY_MESSAGE, max_size=12))
def test_any_bytes_never_break_an_open_client(messages: list[bytes]) -> None:
    c = _open_client()
    for m in messages:
        events = c.receive_data(m)
        assert all(isinstance(e, SessionEvent) for e in events)
        assert len(events) <= 1
    assert c.open and c.counters["messages_in"] == len(messages) + 1
    assert c.data_to_send() == []  # a client never answers the server by itself


@settings(max_examples=300, deadline=None)
@given(ANY_MESSAGE)
def test_the_first_message_opens_exactly_when_it_is_a_handshake(first: bytes) -> None:
    c = ClientSession()
    [ev] = c.receive_data(first)
    try:
        is_handshake = isinstance(protocol.decode(first), protocol.Handshake)
    except protocol.ProtocolError:
        is_handshake = False
    assert isinstance(ev, Opened) is is_handshake
    assert c.open is is_handshake
    assert c.data_to_send() == ([] if is_handshake else [CloseFrame(1000)])


@settings(max_examples=300, deadline=None)
@given(st.lists(ANY_MESSAGE, max_size=12))
def test_any_bytes_get_one_valid_reply_at_most_from_the_server(messages: list[bytes]) -> None:
    s = _open_server()
    for m in messages:
        events = s.receive_data(m)
        out = s.data_to_send()
        malformed = [e for e in events if isinstance(e, MalformedReceived)]
        assert len(out) == len(malformed) <= 1
        for reply in out:  # every reply is a well-formed 0x05 error
            assert isinstance(reply, bytes)
            assert isinstance(protocol.decode(reply), protocol.ErrorMessage)
    assert s.open


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=256), st.text(min_size=1, max_size=40))
def test_what_one_half_sends_the_other_half_reads(ogg: bytes, text: str) -> None:
    c, s = _open_client(), _open_server()
    c.send_audio(ogg)
    c.send_text(text)
    got = [e for m in c.data_to_send() for e in s.receive_data(m)]  # type: ignore[arg-type]
    assert got == [AudioReceived(ogg), TextReceived(text)]
    s.send_audio(ogg)
    s.send_text(text)
    back = [e for m in s.data_to_send() for e in c.receive_data(m)]  # type: ignore[arg-type]
    assert back == [AudioReceived(ogg), TextReceived(text)]

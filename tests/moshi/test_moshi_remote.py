"""The remote transport against WebSocket peers that send exact bytes (error mapping,
both handshakes, every kind on the wire, TLS, auth). Kyutai's own server: test_moshi_server.py.
"""

from __future__ import annotations

import asyncio
import http
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from voice_server_moshi.audio.opus import OpusDecoder, OpusEncoder
from voice_server_moshi.errors import ConnectError, ConnectTimeoutError, ServerBusyError
from voice_server_moshi.moshi.remote import RemoteTransport, build_url, redact_url
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.moshi.transport import (
    AgentAudio,
    AgentText,
    PeerClosed,
    PeerError,
    TransportEvent,
)
from voice_server_moshi.testing.moshi_server import free_port

RUST_HANDSHAKE = b"\x00" + (0).to_bytes(4, "little") + (3).to_bytes(4, "little")

Handler = Callable[[ServerConnection], Awaitable[None]]


async def _peer(handler: Handler, **kw: Any) -> Server:
    return await serve(handler, "127.0.0.1", 0, compression=None, **kw)


def _url(server: Server, scheme: str = "ws", host: str = "127.0.0.1") -> str:
    port = next(iter(server.sockets)).getsockname()[1]
    return f"{scheme}://{host}:{port}/api/chat"


async def _collect(tr: RemoteTransport, within_s: float = 5.0) -> list[TransportEvent]:
    out: list[TransportEvent] = []

    async def run() -> None:
        async for e in tr.receive():
            out.append(e)

    await asyncio.wait_for(run(), within_s)
    return out


def test_build_url_appends_the_rust_sampling_parameters() -> None:
    s = MoshiSettings(url="ws://h:8998/api/chat?worker_auth_id=7&text_topk=1",
                      text_temperature=0.7, text_topk=25, audio_seed=42)
    url = build_url(s)
    assert url.startswith("ws://h:8998/api/chat?")
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert query == {"worker_auth_id": "7", "text_topk": "25", "text_temperature": "0.7",
                     "audio_seed": "42"}
    assert build_url(MoshiSettings(url="ws://h/api/chat")) == "ws://h/api/chat"


def test_redact_url() -> None:
    assert redact_url("wss://u:secret@h:1/api/chat") == "wss://<redacted>@h:1/api/chat"
    assert redact_url("ws://h/api/chat") == "ws://h/api/chat"


async def test_refused_is_a_connect_error() -> None:
    tr = RemoteTransport(MoshiSettings(url=f"ws://127.0.0.1:{free_port()}/api/chat"))
    with pytest.raises(ConnectError, match="could not connect") as info:
        await tr.open("c")
    assert not isinstance(info.value, ConnectTimeoutError | ServerBusyError)


async def test_no_upgrade_is_a_connect_timeout() -> None:
    # A TCP server that accepts and never answers the HTTP upgrade.
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    tr = RemoteTransport(MoshiSettings(url=f"ws://127.0.0.1:{port}/api/chat",
                                       connect_timeout_s=0.5))
    t0 = time.monotonic()
    with pytest.raises(ConnectTimeoutError, match=r"within 0\.5s"):
        await tr.open("c")
    assert time.monotonic() - t0 < 3
    for w in held:
        w.close()
    srv.close()


async def test_withheld_handshake_is_server_busy() -> None:
    async def hold(ws: ServerConnection) -> None:
        await ws.wait_closed()  # accepted, like moshi.server waiting on its lock

    async with await _peer(hold) as srv:
        tr = RemoteTransport(MoshiSettings(url=_url(srv), connect_timeout_s=0.5))
        t0 = time.monotonic()
        with pytest.raises(ServerBusyError) as info:
            await tr.open("c")
        assert str(info.value) == (
            "server busy: connected but no handshake within 0.5s; "
            "the server is serving another call"
        )
        assert time.monotonic() - t0 < 3


async def test_cancelled_connect_leaves_no_socket_behind() -> None:
    closed = asyncio.Event()

    async def hold(ws: ServerConnection) -> None:
        await ws.wait_closed()
        closed.set()

    async with await _peer(hold) as srv:
        tr = RemoteTransport(MoshiSettings(url=_url(srv), connect_timeout_s=30))
        task = asyncio.create_task(tr.open("c"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 2)


@pytest.mark.parametrize(
    ("status", "exc", "text"),
    [(503, ServerBusyError, "HTTP 503"), (429, ServerBusyError, "HTTP 429"),
     (401, ConnectError, "auth_token"), (404, ConnectError, "HTTP 404")],
)
async def test_http_refusals(status: int, exc: type[Exception], text: str) -> None:
    def refuse(conn: ServerConnection, req: Request) -> Response:
        return conn.respond(http.HTTPStatus(status), "no\n")

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("not reached")

    async with await _peer(never, process_request=refuse) as srv:
        with pytest.raises(exc, match=text):
            await RemoteTransport(MoshiSettings(url=_url(srv))).open("c")


async def test_closed_before_handshake_and_wrong_first_message() -> None:
    async def close_now(ws: ServerConnection) -> None:
        await ws.close(1011, "internal error")

    async def try_later(ws: ServerConnection) -> None:
        await ws.close(1013, "try later")

    async def text_first(ws: ServerConnection) -> None:
        await ws.send(b"\x02 hi")
        await ws.wait_closed()

    async with await _peer(close_now) as srv:
        with pytest.raises(ConnectError, match="closed the connection before the handshake"):
            await RemoteTransport(MoshiSettings(url=_url(srv))).open("c")
    async with await _peer(try_later) as srv:
        with pytest.raises(ServerBusyError, match="1013"):
            await RemoteTransport(MoshiSettings(url=_url(srv))).open("c")
    async with await _peer(text_first) as srv:
        with pytest.raises(ConnectError, match="Text before the handshake"):
            await RemoteTransport(MoshiSettings(url=_url(srv))).open("c")


async def test_rust_style_peer_every_kind_on_the_wire() -> None:
    seen: dict[str, Any] = {}
    enc = OpusEncoder(24000)
    ogg = enc.encode(np.full(1920, 0.2, np.float32))
    received: list[bytes] = []

    async def rust(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen["path"] = ws.request.path
        seen["auth"] = ws.request.headers.get("Authorization")
        await ws.send(RUST_HANDSHAKE)
        await ws.send(b'\x04{"instance_name":"r1"}')
        await ws.send(b"\x0a\x01\x02")  # unknown kind: skipped
        await ws.send(b"\x02\xff\xfe")  # bad UTF-8: reported, skipped
        await ws.send(b"\x06")  # ping
        await ws.send(b"\x03\x01")  # control
        await ws.send(b"\x02 hi")
        await ws.send(b"\x07\x01 there")
        await ws.send(b"\x05overloaded")
        await ws.send(b"\x01" + ogg)
        async for msg in ws:
            assert isinstance(msg, bytes)
            received.append(msg)
            if len(received) == 2:
                break
        await ws.close(1011, "bye")

    async with await _peer(rust) as srv:
        settings = MoshiSettings(url=_url(srv), auth_token="s3cret-token", text_topk=25)
        tr = RemoteTransport(settings)
        with capture_logs() as logs:
            await tr.open("call-1")
            for _ in range(2):
                await tr.send_frame(np.full(1920, 0.1, np.float32))
            events = await _collect(tr)
            await tr.close()
    assert tr.handshake is not None and tr.handshake.model_version == 3
    assert tr.metadata == {"instance_name": "r1"}
    assert seen["auth"] == "Bearer s3cret-token"
    assert seen["path"] == "/api/chat?text_topk=25"
    assert "s3cret-token" not in repr(logs)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["PeerError", "AgentText", "AgentText", "PeerError", "AgentAudio",
                     "PeerClosed"]
    assert isinstance(events[0], PeerError) and events[0].code == "protocol_error"
    assert "UTF-8" in events[0].message
    assert [e.text for e in events if isinstance(e, AgentText)] == [" hi", " there"]
    assert isinstance(events[3], PeerError) and events[3].code == "peer_error"
    audio = events[4]
    assert isinstance(audio, AgentAudio) and audio.pcm.dtype == np.float32
    assert len(audio.pcm) > 0
    assert events[-1] == PeerClosed(code=1011, reason="bye", clean=True)
    assert tr.counters["unknown_messages"] == 1 and tr.counters["protocol_errors"] == 1
    # What we sent: audio messages of Ogg/Opus that decode to our 80 ms frames.
    dec = OpusDecoder(24000)
    pcm = np.concatenate([dec.decode(m[1:]) for m in received])
    assert all(m[0] == 1 for m in received) and received[0][1:5] == b"OggS"
    assert len(pcm) == 2 * 1920


async def test_bearer_token_never_reaches_websockets_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hs(ws: ServerConnection) -> None:
        assert ws.request is not None
        assert ws.request.headers["Authorization"] == "Bearer tok-123456"
        await ws.send(b"\x00")
        await ws.wait_closed()

    async with await _peer(hs) as srv:
        tr = RemoteTransport(MoshiSettings(url=_url(srv), auth_token="tok-123456"))
        with caplog.at_level(logging.DEBUG, logger="websockets"):
            await tr.open("c")
            await tr.close()
    # (The test's own server logs what it received; only the client side is ours.)
    client = "\n".join(r.getMessage() for r in caplog.records if r.name == "websockets.client")
    assert "Authorization: <redacted>" in client  # the header was logged, redacted
    assert "tok-123456" not in client


async def test_send_frame_validates_shape() -> None:
    async def hs(ws: ServerConnection) -> None:
        await ws.send(b"\x00")
        await ws.wait_closed()

    async with await _peer(hs) as srv:
        tr = RemoteTransport(MoshiSettings(url=_url(srv)))
        await tr.open("c")
        with pytest.raises(ValueError, match="1920 float32"):
            await tr.send_frame(np.zeros(960, np.float32))
        await tr.close()
        await tr.close()  # idempotent


async def test_vanished_peer_is_reported_promptly() -> None:
    async def vanish(ws: ServerConnection) -> None:
        await ws.send(b"\x00")
        await asyncio.sleep(0.2)
        ws.transport.abort()  # TCP reset, no close frame

    async with await _peer(vanish) as srv:
        tr = RemoteTransport(MoshiSettings(url=_url(srv)))
        await tr.open("c")
        t0 = time.monotonic()
        events = await _collect(tr, within_s=5)
        assert time.monotonic() - t0 < 2.0
    assert events == [PeerClosed(code=1006, reason="connection lost (no close frame)",
                                 clean=False)]
    await tr.close()


async def test_silent_peer_is_detected_by_keepalive() -> None:
    # The peer stops answering pings (a dead host): the ping timeout ends the session.
    done = asyncio.Event()

    async def frozen(ws: ServerConnection) -> None:
        await ws.send(b"\x00")
        ws.transport.pause_reading()  # no pong will ever be read or sent
        await done.wait()
        ws.transport.abort()

    async with await _peer(frozen, ping_interval=None) as srv:
        tr = RemoteTransport(MoshiSettings(url=_url(srv)))
        await tr.open("c")
        t0 = time.monotonic()
        events = await _collect(tr, within_s=5)
        elapsed = time.monotonic() - t0
        done.set()
        await tr.close()
    assert elapsed <= 2.5  # 2 s by design, plus a loaded machine
    assert len(events) == 1 and isinstance(events[0], PeerClosed)
    assert not events[0].clean and "no message or pong" in events[0].reason


async def test_quiet_but_responsive_peer_stays_connected() -> None:
    # No messages for 3 s (longer than the 1.5 s liveness bound), but pongs: alive.
    async def quiet(ws: ServerConnection) -> None:
        await ws.send(b"\x00")
        await ws.wait_closed()

    async with await _peer(quiet) as srv:
        tr = RemoteTransport(MoshiSettings(url=_url(srv)))
        await tr.open("c")
        with pytest.raises(TimeoutError):
            await _collect(tr, within_s=3.0)
        await tr.close()


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_peer(self_signed: tuple[Path, Path]) -> AsyncIterator[str]:
    cert, key = self_signed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def hs(ws: ServerConnection) -> None:
        await ws.send(RUST_HANDSHAKE)
        await ws.wait_closed()

    async with await _peer(hs, ssl=ctx) as srv:
        yield _url(srv, "wss", "localhost")


async def test_self_signed_certificate_is_refused_by_default(tls_peer: str) -> None:
    with pytest.raises(ConnectError, match="tls_insecure"):
        await RemoteTransport(MoshiSettings(url=tls_peer)).open("c")


async def test_self_signed_certificate_with_explicit_opt_in(tls_peer: str) -> None:
    tr = RemoteTransport(MoshiSettings(url=tls_peer, tls_insecure=True))
    await tr.open("c")
    assert tr.handshake is not None and tr.handshake.protocol_version == 0
    await tr.close()


async def test_ca_file_trusts_the_certificate(
    tls_peer: str, self_signed: tuple[Path, Path]
) -> None:
    tr = RemoteTransport(MoshiSettings(url=tls_peer, ca_file=str(self_signed[0])))
    await tr.open("c")
    await tr.close()



"""The remote transport: Kyutai's ``/api/chat`` WebSocket protocol over ``websockets``.

Caller frames are Opus-encoded here (Ogg pages, 24 kHz) and sent as ``0x01`` messages;
agent Ogg pages are decoded back to PCM. The protocol (handshake, kinds, errors, close
codes) is the sans-I/O :class:`~voice_server_moshi.moshi.session.ClientSession`; this module
is its asyncio shell: the socket, TLS, keepalive, Opus, and exceptions for the adapter.

Connect errors, all subclasses of :class:`~voice_server_moshi.errors.ConnectError`:

* :class:`ConnectTimeoutError`: TCP, TLS or the WebSocket upgrade did not complete in time;
* :class:`ServerBusyError`: the upgrade completed but no handshake came in time. Kyutai's
  Python ``moshi.server`` does exactly this while another call holds its lock; HTTP 429
  and 503 are reported the same way;
* :class:`ConnectError`: refused, bad URL, TLS verification failed, HTTP 4xx/5xx, or the
  server closed or sent something other than a handshake first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from .._log import get_logger
from ..errors import ConnectError, ConnectTimeoutError, ServerBusyError
from . import protocol
from .remote_connect import WS_LOGGER, build_url, redact_url, ssl_context
from .session import (
    AudioReceived,
    ClientSession,
    Closed,
    CloseFrame,
    ErrorReceived,
    HandshakeFailed,
    Ignored,
    MalformedReceived,
    MetadataReceived,
    SessionEvent,
    TextReceived,
    UnknownReceived,
)
from .settings import MoshiSettings
from .transport import (
    MOSHI_FRAME_SAMPLES,
    MOSHI_SAMPLE_RATE,
    PCM,
    AgentAudio,
    AgentText,
    MoshiTransport,
    PeerClosed,
    PeerError,
    TransportEvent,
    queued_events,
)

__all__ = ["RemoteTransport", "build_url", "redact_url"]

#: Liveness: a peer that sent nothing (no message, no pong) for DEAD_AFTER_S is declared
#: gone; a ping goes out whenever the link has been quiet for PING_INTERVAL_S. Moshi
#: streams a message every 80 ms, so data is the main sign of life; a strict ping timeout
#: is not used because Kyutai's Python server answers pings only between the frames it
#: processes inline, so a server running a little behind would be killed for it. A
#: silently vanished peer is reported within DEAD_AFTER_S + PING_INTERVAL_S = 2 s; one
#: whose process dies, at once (its OS resets the TCP connection).
PING_INTERVAL_S = 0.5
DEAD_AFTER_S = 1.5
#: How long a close may wait for the other side's close frame.
CLOSE_TIMEOUT_S = 0.5
#: Agent events buffered between the socket and the adapter (about 6 s of 80 ms frames);
#: when full the reader stops reading, so TCP pushes back instead of memory growing.
RECEIVE_QUEUE_SIZE = 150

class RemoteTransport(MoshiTransport):
    """One call to a Moshi server speaking Kyutai's protocol (Python or Rust servers)."""

    def __init__(
        self,
        settings: MoshiSettings,
        *,
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
        ping_interval_s: float = PING_INTERVAL_S,
        dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        self.settings = settings
        self.max_message_bytes = max_message_bytes
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.url = build_url(settings)
        self.session = ClientSession(max_message_bytes=max_message_bytes)
        self.log = get_logger(__name__, url=redact_url(self.url))
        self._ws: ClientConnection | None = None
        self._events: asyncio.Queue[TransportEvent | None] = asyncio.Queue(RECEIVE_QUEUE_SIZE)
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self._dead_reason: str | None = None
        self._closing = False
        self._encoder: Any = None
        self._decoder: Any = None

    @property
    def handshake(self) -> protocol.Handshake | None:
        return self.session.handshake

    @property
    def metadata(self) -> Any:
        return self.session.metadata

    @property
    def counters(self) -> dict[str, int]:
        """messages_in, messages_out, unknown_messages, protocol_errors."""
        return self.session.counters

    # -- MoshiTransport ------------------------------------------------------------------

    async def open(self, call_id: str) -> str:
        from ..audio.opus import OpusDecoder, OpusEncoder

        self.log = self.log.bind(call_id=call_id)
        timeout = self.settings.connect_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        headers = {}
        if self.settings.auth_token:
            headers["Authorization"] = f"Bearer {self.settings.auth_token}"
        shown = redact_url(self.url)
        try:
            ws = await asyncio.wait_for(
                connect(
                    self.url,
                    additional_headers=headers,
                    ssl=ssl_context(self.settings, self.url),
                    open_timeout=None,  # the outer wait_for bounds TCP + TLS + upgrade
                    ping_interval=None,  # our watchdog does keepalive (see DEAD_AFTER_S)
                    ping_timeout=None,
                    close_timeout=CLOSE_TIMEOUT_S,
                    # Opus does not compress; deflate would only cost CPU.
                    compression=None,
                    # A loopback or LAN Moshi server must not be routed through $HTTP_PROXY.
                    proxy=None,
                    # Twice the protocol limit: messages in between are reported and
                    # skipped by the codec; beyond it websockets closes with 1009.
                    max_size=2 * self.max_message_bytes,
                    max_queue=64,
                    logger=WS_LOGGER,
                ),
                timeout,
            )
        except TimeoutError:
            raise ConnectTimeoutError(
                f"could not open a WebSocket to {shown} within {timeout:g}s "
                "(TCP, TLS or the HTTP upgrade did not complete)"
            ) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (429, 503):
                raise ServerBusyError(
                    f"server busy: {shown} answered HTTP {status}; it has no free capacity"
                ) from None
            hint = " (check moshi.auth_token)" if status in (401, 403) else ""
            raise ConnectError(
                f"{shown} refused the WebSocket upgrade with HTTP {status}{hint}"
            ) from None
        except InvalidURI as exc:
            raise ConnectError(f"bad Moshi URL {shown}: {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(
                f"TLS certificate of {shown} not trusted: {exc.verify_message}; set "
                "moshi.ca_file to its CA, or moshi.tls_insecure: true for a self-signed "
                "certificate you trust"
            ) from None
        except (OSError, InvalidHandshake) as exc:
            raise ConnectError(f"could not connect to {shown}: {exc}") from None
        self._ws = ws
        session = self.session
        try:
            first = await asyncio.wait_for(ws.recv(decode=False), max(0.0, deadline - loop.time()))
            events = session.receive_data(first)
        except TimeoutError:
            events = session.handshake_timed_out(timeout)
        except ConnectionClosed as exc:
            events = session.receive_close(exc.rcvd.code if exc.rcvd else None,
                                           exc.rcvd.reason if exc.rcvd else "",
                                           clean=exc.rcvd is not None)
        except BaseException:
            # Cancelled by the host while waiting: never leave the socket behind (queued
            # on a Python moshi.server, it would take the lock when the current call ends).
            ws.transport.abort()
            self._ws = None
            raise
        failed = next((e for e in events if isinstance(e, HandshakeFailed)), None)
        if failed is not None or session.handshake is None:
            await self._abort()
            detail = failed.describe(shown) if failed else f"{shown} sent no handshake"
            if failed is not None and failed.busy:
                raise ServerBusyError(detail)
            raise ConnectError(detail)
        msg = session.handshake
        self._encoder = OpusEncoder(MOSHI_SAMPLE_RATE)
        self._decoder = OpusDecoder(MOSHI_SAMPLE_RATE)
        self._last_rx = loop.time()
        self._reader = loop.create_task(self._read(ws), name=f"moshi-remote-reader:{call_id}")
        self._watchdog = loop.create_task(
            self._watch(ws), name=f"moshi-remote-watchdog:{call_id}"
        )
        session_id = f"moshi-{uuid.uuid4().hex[:12]}"
        self.log.info(
            "moshi_handshake",
            session_id=session_id,
            protocol_version=msg.protocol_version,
            model_version=msg.model_version,
        )
        return session_id

    async def send_frame(self, pcm: PCM) -> None:
        if self._ws is None:
            raise ConnectError("send_frame() before open()")
        if pcm.dtype != np.float32 or pcm.shape != (MOSHI_FRAME_SAMPLES,):
            raise ValueError(
                f"a Moshi frame is {MOSHI_FRAME_SAMPLES} float32 samples, "
                f"got {pcm.dtype} {pcm.shape}"
            )
        if self._closing:
            return
        ogg = self._encoder.encode(pcm)
        if not self.session.send_audio(ogg):
            return
        try:
            await self._flush(self._ws)
        except ConnectionClosed:
            # The reader reports the close (PeerClosed); the frame is moot.
            self.log.debug("send_after_close")

    async def receive(self) -> AsyncIterator[TransportEvent]:
        async for event in queued_events(self._events):
            yield event

    async def close(self) -> None:
        self._closing = True
        self.session.close()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(ws), CLOSE_TIMEOUT_S + 0.5)
        for task in (self._watchdog, self._reader):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._put_nowait(None)

    # -- internals -----------------------------------------------------------------------

    async def _flush(self, ws: ClientConnection | None) -> None:
        """Send what the session queued, in order (a close frame last)."""
        for item in self.session.data_to_send():
            if ws is None:
                continue
            if isinstance(item, CloseFrame):
                await ws.close(item.code, item.reason)
            else:
                await ws.send(item)

    async def _abort(self) -> None:
        ws, self._ws = self._ws, None
        self.session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush(ws), CLOSE_TIMEOUT_S)

    def _put_nowait(self, event: TransportEvent | None) -> None:
        # Used at close only: make room so the terminal marker always gets in.
        while True:
            try:
                self._events.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._events.get_nowait()

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._last_rx = asyncio.get_running_loop().time()
                for ev in self.session.receive_data(raw):
                    for event in self._transport_events(ev):
                        await self._events.put(event)
        except ConnectionClosed:
            pass  # reported below from the close frame received, if any
        if self._closing:
            return
        rcvd = ws.protocol.close_rcvd
        code = rcvd.code if rcvd is not None else 1006
        if rcvd is not None:
            reason = rcvd.reason
        else:
            reason = self._dead_reason or "connection lost (no close frame)"
        for ev in self.session.receive_close(code, reason, clean=rcvd is not None):
            for event in self._transport_events(ev):
                await self._events.put(event)

    async def _watch(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()

        def alive(_: object) -> None:
            self._last_rx = loop.time()

        while True:
            await asyncio.sleep(self.ping_interval_s / 2)
            quiet = loop.time() - self._last_rx
            if quiet > self.dead_after_s:
                self._dead_reason = (
                    f"no message or pong from the server for {self.dead_after_s:g}s"
                )
                self.log.warning("moshi_peer_unresponsive", quiet_s=round(quiet, 2))
                ws.transport.abort()
                return
            if quiet >= self.ping_interval_s:
                try:
                    waiter = await ws.ping()
                except (ConnectionClosed, RuntimeError):
                    return
                asyncio.ensure_future(waiter).add_done_callback(alive)

    def _transport_events(self, ev: SessionEvent) -> list[TransportEvent]:
        """A session event -> what the adapter sees (and the log)."""
        match ev:
            case AudioReceived(data=ogg):
                pcm = self._decoder.decode(ogg)
                return [AgentAudio(pcm)] if len(pcm) else []
            case TextReceived(text=t):
                return [AgentText(t)]
            case ErrorReceived(message=m):
                self.log.warning("moshi_peer_error", message=m)
                return [PeerError(m)]
            case MalformedReceived(error=exc):
                self.log.warning("moshi_malformed_message", error=str(exc))
                message = f"malformed message from the Moshi server: {exc}"
                return [PeerError(message, code="protocol_error")]
            case MetadataReceived(value=v):
                self.log.info("moshi_metadata", metadata=v)
            case UnknownReceived(kind=k, size=n):
                self.log.info("moshi_unknown_message_skipped", kind=k, size=n)
            case Ignored(message=protocol.Handshake()):
                self.log.warning("moshi_repeated_handshake_ignored")
            case Ignored(message=m):
                # Ping, Control, Image, Codes: nothing for a voice call to do with them.
                self.log.debug("moshi_message_ignored", kind=type(m).__name__)
            case Closed(code=code, reason=reason, clean=clean):
                self.log.info("moshi_peer_closed", code=code, reason=reason, clean=clean)
                return [PeerClosed(code=code, reason=reason, clean=clean)]
        return []

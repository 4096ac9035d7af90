"""What the three WebSocket vendor adapters share: the read loop, close handling, and the
agent-audio path (vendor wire format -> call format -> whole frames -> ``audio-chunk``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..adapter import BaseAdapter
from ..audio.call_audio import OutputFramer, Transcoder, WireFormat
from ..errors import ConnectError
from ..events import AudioChunk
from ..formats import AudioFormat
from ._ws import CloseInfo, close_info, parse_json, send_json


class WsVendorAdapter(BaseAdapter):
    """A :class:`BaseAdapter` over one vendor WebSocket carrying JSON messages."""

    #: Close codes with which the peer ends a call normally: ``disconnected`` without error.
    normal_close_codes: ClassVar[frozenset[int]] = frozenset({1000})

    def __init__(self, *, max_queued_events: int) -> None:
        super().__init__(max_queued_events=max_queued_events)
        self._ws: ClientConnection | None = None
        self._to_wire: Transcoder | None = None
        self._from_wire: Transcoder | None = None
        self._framer: OutputFramer | None = None
        self._last_peer_error: str | None = None
        #: Agent audio emitted as ``audio-chunk`` so far, in ms of call audio.
        self.emitted_ms = 0.0
        #: Caller audio sent to the peer so far, in ms of call audio.
        self.caller_ms = 0.0

    # -- audio -------------------------------------------------------------------------

    def _setup_audio(self, call: AudioFormat, wire_in: WireFormat, wire_out: WireFormat) -> None:
        """``wire_in``: what the peer expects from us; ``wire_out``: what it sends back.

        Raises :class:`ConnectError` when a vendor format cannot be converted to the call's.
        """
        try:
            self._to_wire = Transcoder(WireFormat.of(call), wire_in)
            self._from_wire = Transcoder(wire_out, WireFormat.of(call))
        except ValueError as exc:
            raise ConnectError(
                f"{self.adapter_name}: cannot convert between the call's {call.encoding} at "
                f"{call.sample_rate} Hz and the peer's {wire_in} / {wire_out}: {exc}"
            ) from None
        self._framer = OutputFramer(call)

    def _caller_to_wire(self, chunk: bytes) -> bytes:
        assert self._to_wire is not None
        self.caller_ms += self.config.audio.duration_ms(len(chunk))
        return self._to_wire.process(chunk)

    def _agent_audio(self, wire_bytes: bytes) -> None:
        """Emit agent audio (vendor wire format) as whole frames of the call's format."""
        assert self._from_wire is not None
        self._emit_frames(self._from_wire.process(wire_bytes))

    def _agent_audio_end(self) -> None:
        """End of an agent turn: emit what is held, the last frame padded with silence."""
        assert self._from_wire is not None and self._framer is not None
        self._emit_frames(self._from_wire.flush())
        last = self._framer.flush_padded()
        if last is not None:
            self._emit_audio_frame(last)

    def _agent_audio_drop(self) -> None:
        """Barge-in: forget agent audio not yet emitted."""
        assert self._from_wire is not None and self._framer is not None
        self._from_wire.flush()
        dropped = self._framer.clear()
        if dropped:
            self.counters["agent_bytes_dropped_on_interrupt"] += dropped

    def _emit_frames(self, call_bytes: bytes) -> None:
        assert self._framer is not None
        for frame in self._framer.push(call_bytes):
            self._emit_audio_frame(frame)

    def _emit_audio_frame(self, frame: bytes) -> None:
        fmt = self.config.audio
        self.emitted_ms += fmt.frame_ms
        self.counters["audio_chunks"] += 1
        self._emit(AudioChunk(audio=frame, format=fmt))

    # -- socket ------------------------------------------------------------------------

    async def _send(self, msg: Mapping[str, Any]) -> bool:
        """Send a JSON message; False when the socket is already closed (the read loop
        reports the close, so the caller's audio is counted as dropped, not raised)."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await send_json(ws, msg)
        except ConnectionClosed:
            self.counters["sends_after_close"] += 1
            return False
        return True

    async def _read_loop(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                msg = parse_json(raw)
                if msg is None:
                    self.counters["peer_messages_unparsed"] += 1
                    self.log.warning("peer_message_unparsed", size=len(raw))
                    continue
                await self._on_message(msg)
                if self.state != "connected":
                    return
        if self.state == "connected":
            await self._on_socket_closed(close_info(ws))

    async def _on_message(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _on_socket_closed(self, info: CloseInfo) -> None:
        """The peer's socket ended: normal end, or a fatal error then ``disconnected``
        (the rule every adapter follows: :meth:`BaseAdapter._peer_ended`)."""
        message = info.describe()
        if self._last_peer_error:
            message += f"; last peer error: {self._last_peer_error}"
        await self._peer_ended(info.code, info.clean, message, self.normal_close_codes)

    async def _close(self) -> None:
        ws = self._ws
        if ws is not None:
            await ws.close(1000, "client disconnect")

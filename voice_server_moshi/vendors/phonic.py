"""Phonic speech-to-speech adapter.

Wire protocol: reference/vendor-protocols.md section C. Phonic streams agent audio
continuously, paced to real time, silence included; agent speech is what lies between
``assistant_started_speaking`` and ``assistant_finished_speaking``, and by default only that
is emitted (``emit_idle_audio`` emits the rest too). Caller audio goes out in chunks of at
most 40 ms, and only once the server said ``ready_to_start_conversation``.

A socket that drops in a way Phonic calls resumable (1006, 1012, or 1001 with reason
"restarting") is reopened with ``reconnect_conv_id`` within the 30 s grace period (ADR 0052),
as the vendor SDKs do; the host sees a non-fatal ``error`` (``peer_reconnecting``) and, if
resumption fails, the usual fatal error and ``disconnected``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any, ClassVar
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection

from ..adapter import VoiceModelConfig
from ..audio.call_audio import WireFormat
from ..capabilities import Capabilities
from ..errors import ConnectError, ConnectTimeoutError
from ..events import Error, Interruption, SpeechEnded, SpeechStarted, Transcript
from ..formats import AudioFormat
from ._base import WsVendorAdapter
from ._ws import CloseInfo, open_ws, recv_json
from .settings import PhonicSettings

#: Phonic rejects longer input chunks (40 ms); 20 ms is what it recommends.
MAX_CHUNK_MS = 20
#: Reconnect back-off, as the vendor SDKs do it: 0.5 s doubling up to 5 s.
RECONNECT_BASE_DELAY_S = 0.5
RECONNECT_MAX_DELAY_S = 5.0


def wire_format_for(call: AudioFormat, choice: str) -> tuple[WireFormat, str]:
    """Phonic's ``input_format``/``output_format`` for a call, and the WireFormat of it."""
    if choice == "auto":
        if call.encoding == "mulaw":
            choice = "mulaw_8000"
        elif call.encoding == "alaw":
            choice = "pcm_8000"  # Phonic has no A-law; decoding A-law to PCM is lossless
        else:
            choice = f"pcm_{min(call.sample_rate, 24000)}"
    kind, _, rate = choice.partition("_")
    return WireFormat("mulaw" if kind == "mulaw" else "pcm16", int(rate)), choice


def is_resumable(info: CloseInfo) -> bool:
    """Phonic's reconnect policy (SDK ``_is_reconnectable_close``)."""
    return info.code in (1006, 1012) or (info.code == 1001 and info.reason == "restarting")


class PhonicAdapter(WsVendorAdapter):
    """The ``phonic`` adapter."""

    adapter_name: ClassVar[str] = "phonic"
    default_capabilities: ClassVar[Capabilities] = Capabilities(
        full_duplex=False,
        server_vad=True,
        interruption=True,
        caller_transcript=True,
        agent_transcript=True,
    )
    #: 1000 normal; 4600 the assistant ended the conversation.
    normal_close_codes: ClassVar[frozenset[int]] = frozenset({1000, 4600})

    def __init__(self, settings: PhonicSettings | None = None) -> None:
        self.settings = settings or PhonicSettings()
        super().__init__(max_queued_events=self.settings.max_queued_events)
        self._conversation_id: str | None = None
        self._ready = False
        self._agent_speaking = False
        self._agent_text: list[str] = []
        self._wire: WireFormat | None = None
        self.reconnects = 0

    # -- session -----------------------------------------------------------------------

    def _url(self, reconnect_conv_id: str | None = None) -> str:
        url = f"{self.settings.base_url.rstrip('/')}/v1/sts/ws"
        return f"{url}?reconnect_conv_id={quote(reconnect_conv_id)}" if reconnect_conv_id else url

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _open(self, config: VoiceModelConfig) -> str:
        s = self.settings
        wire, fmt_name = wire_format_for(config.audio, s.wire_format)
        self._wire = wire
        self._setup_audio(config.audio, wire, wire)
        ws = await open_ws(
            self._url(), headers=self._headers(), timeout_s=s.connect_timeout_s, vendor="phonic"
        )
        self._ws = ws
        try:
            await self._send(self._config_message(fmt_name))
            # Audio is gated on ready_to_start_conversation (LiveKit's plugin does the same).
            while not self._ready:
                msg = await recv_json(ws, s.connect_timeout_s)
                kind = msg.get("type")
                if kind == "conversation_created":
                    self._conversation_id = str(msg.get("conversation_id") or "")
                elif kind == "ready_to_start_conversation":
                    self._ready = True
                elif kind == "error":
                    raise ConnectError(f"phonic: config refused: {_error_text(msg)}")
        except TimeoutError:
            await ws.close()
            raise ConnectTimeoutError(
                f"phonic: not ready_to_start_conversation within {s.connect_timeout_s:g} s"
            ) from None
        except BaseException:
            await ws.close()
            raise
        self._spawn(self._read_loop(ws), "read")
        return self._conversation_id or f"phonic-{config.call_id}"

    def _config_message(self, fmt_name: str) -> dict[str, Any]:
        s = self.settings
        msg: dict[str, Any] = {
            "type": "config",
            "input_format": fmt_name,
            "output_format": fmt_name,
            "stream_ahead_of_real_time": s.stream_ahead_of_real_time,
        }
        for key in ("agent", "project", "phonic_model", "voice_id", "system_prompt",
                    "welcome_message"):
            value = getattr(s, key)
            if value is not None:
                msg[key] = value
        return msg

    async def _send_audio(self, chunk: bytes) -> None:
        wire = self._caller_to_wire(chunk)
        if not self._ready:
            # Reconnecting: real-time caller audio cannot wait; it is counted, not queued.
            self.counters["caller_ms_dropped_reconnecting"] += int(
                self.config.audio.duration_ms(len(chunk))
            )
            return
        assert self._wire is not None
        step = self._wire.sample_rate * MAX_CHUNK_MS // 1000 * self._wire.bytes_per_sample
        for i in range(0, len(wire), step):
            piece = wire[i : i + step]
            await self._send({"type": "audio_chunk", "audio": base64.b64encode(piece).decode()})

    # -- server messages ---------------------------------------------------------------

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "audio_chunk":
            self._on_audio(msg)
        elif kind == "assistant_started_speaking":
            self._agent_speaking = True
            self._agent_text.clear()
        elif kind == "assistant_finished_speaking":
            self._end_agent_turn()
        elif kind == "interrupted_response":
            self._on_interrupted(str(msg.get("text") or ""))
        elif kind == "user_started_speaking":
            self._emit(SpeechStarted(t_ms=self.caller_ms, source="provider"))
        elif kind == "user_finished_speaking":
            self._emit(SpeechEnded(t_ms=self.caller_ms, source="provider"))
        elif kind == "input_text":
            self._emit(Transcript(role="caller", text=str(msg.get("text", ""))))
        elif kind == "error":
            err = msg.get("error") or {}
            code = str(err.get("code") or "phonic_error")
            self._last_peer_error = f"{code}: {_error_text(msg)}"
            self.log.warning("peer_error", code=code, message=_error_text(msg))
            self._emit(Error(code=code, message=_error_text(msg)))
        elif kind == "warning":
            warning = msg.get("warning") or {}
            self.counters["peer_warnings"] += 1
            self.log.warning("peer_warning", code=warning.get("code"),
                             message=warning.get("message"))
        elif kind in ("conversation_created", "conversation_reconnected"):
            self._conversation_id = str(msg.get("conversation_id") or self._conversation_id)
            self._ready = True
        elif kind == "ready_to_start_conversation":
            self._ready = True
        else:
            self.counters["peer_events_ignored"] += 1

    def _on_audio(self, msg: dict[str, Any]) -> None:
        try:
            audio = base64.b64decode(msg.get("audio") or "", validate=True)
        except (binascii.Error, ValueError):
            self.counters["peer_audio_undecodable"] += 1
            return
        if self._agent_speaking or self.settings.emit_idle_audio:
            self._agent_audio(audio)
        text = msg.get("text")
        if self._agent_speaking and isinstance(text, str) and text:
            self._agent_text.append(text)
            self._emit(Transcript(role="agent", text=text, final=False))

    def _end_agent_turn(self) -> None:
        if not self._agent_speaking:
            return
        self._agent_speaking = False
        if not self.settings.emit_idle_audio:
            self._agent_audio_end()
        if self._agent_text:
            self._emit(Transcript(role="agent", text=" ".join(
                t.strip() for t in self._agent_text if t.strip())))
            self._agent_text.clear()

    def _on_interrupted(self, spoken: str) -> None:
        self._agent_speaking = False
        self._agent_text.clear()
        self._agent_audio_drop()
        self._emit(Interruption(t_ms=self.caller_ms))
        self.counters["interruptions"] += 1
        if spoken:
            self._emit(Transcript(role="agent", text=spoken))

    # -- resumption --------------------------------------------------------------------

    async def _on_socket_closed(self, info: CloseInfo) -> None:
        if not (self.settings.reconnect and self._conversation_id and is_resumable(info)):
            await super()._on_socket_closed(info)
            return
        self._ready = False
        self._agent_audio_drop()
        self._emit(Error(code="peer_reconnecting", message=f"{info.describe()}; resuming "
                         f"within {self.settings.reconnect_grace_s:g} s"))
        ws = await self._resume()
        if ws is None:
            await super()._on_socket_closed(info)
            return
        self._ws = ws
        self._ready = True
        self.reconnects += 1
        self.log.info("phonic_resumed", attempts=self.reconnects)
        self._spawn(self._read_loop(ws), "read")

    async def _resume(self) -> ClientConnection | None:
        assert self._conversation_id is not None
        deadline = time.monotonic() + self.settings.reconnect_grace_s
        delay = RECONNECT_BASE_DELAY_S
        while True:
            if time.monotonic() + delay >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
            left = deadline - time.monotonic()
            try:
                return await open_ws(
                    self._url(self._conversation_id),
                    headers=self._headers(),
                    timeout_s=max(0.1, min(self.settings.connect_timeout_s, left)),
                    vendor="phonic",
                )
            except ConnectError as exc:
                self.log.info("phonic_resume_failed", error=str(exc))


def _error_text(msg: dict[str, Any]) -> str:
    err = msg.get("error") or {}
    text = str(err.get("message") or "")
    params = msg.get("param_errors")
    if isinstance(params, dict) and params:
        text += " (" + "; ".join(f"{k}: {v}" for k, v in params.items()) + ")"
    return text

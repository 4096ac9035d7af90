"""ElevenLabs Agents adapter (the conversation WebSocket).

Wire protocol: reference/vendor-protocols.md section B. Audio formats are the agent's (set on
the agent, announced in ``conversation_initiation_metadata``); the adapter converts between
them and the call's format. ElevenLabs sends no caller speech-started/ended events: with
``speech_events: provider`` (default) the adapter derives them from the agent's own signals,
as ADR 0050 describes; with ``off`` it emits none.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from ..adapter import VoiceModelConfig
from ..audio.call_audio import WireFormat
from ..capabilities import Capabilities
from ..errors import ConnectError, ConnectTimeoutError
from ..events import Error, Interruption, SpeechEnded, SpeechStarted, Transcript
from ._base import WsVendorAdapter
from ._ws import http_to_ws, open_ws, recv_json
from .settings import ElevenLabsSettings

#: ElevenLabs has no end-of-audio marker: a held partial frame is sent (padded) once no
#: agent audio has arrived for this long.
AUDIO_IDLE_FLUSH_S = 0.25


def parse_format(name: str) -> WireFormat:
    """``ulaw_8000`` / ``pcm_16000`` -> WireFormat; ValueError for anything else."""
    kind, _, rate = name.partition("_")
    if kind == "ulaw" and rate == "8000":
        return WireFormat("mulaw", 8000)
    if kind == "pcm" and rate.isdigit():
        return WireFormat("pcm16", int(rate))
    raise ValueError(f"unsupported ElevenLabs audio format {name!r}")


class ElevenLabsAdapter(WsVendorAdapter):
    """The ``elevenlabs`` adapter."""

    adapter_name: ClassVar[str] = "elevenlabs"
    default_capabilities: ClassVar[Capabilities] = Capabilities(
        full_duplex=False,
        server_vad=True,
        interruption=True,
        caller_transcript=True,
        agent_transcript=True,
    )

    def __init__(self, settings: ElevenLabsSettings) -> None:
        self.settings = settings
        super().__init__(max_queued_events=settings.max_queued_events)
        self._caps = Capabilities(
            full_duplex=False,
            server_vad=settings.speech_events == "provider",
            interruption=True,
            caller_transcript=True,
            agent_transcript=True,
        )
        self._last_interrupt_id = 0
        self._caller_speaking = False
        self._idle_flush: asyncio.TimerHandle | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    # -- session -----------------------------------------------------------------------

    async def _open(self, config: VoiceModelConfig) -> str:
        s = self.settings
        url = await self._signed_url() if s.api_key else (
            f"{http_to_ws(s.base_url.rstrip('/'))}/v1/convai/conversation"
            f"?agent_id={quote(s.agent_id)}"
        )
        ws = await open_ws(url, headers=None, timeout_s=s.connect_timeout_s, vendor="elevenlabs")
        self._ws = ws
        try:
            await self._send(self._initiation(config))
            while True:
                msg = await recv_json(ws, s.connect_timeout_s)
                kind = msg.get("type")
                if kind == "conversation_initiation_metadata":
                    meta = msg.get("conversation_initiation_metadata_event") or {}
                    break
                if kind == "ping":
                    await self._pong(msg)
                elif kind == "error":
                    err = msg.get("error_event") or {}
                    raise ConnectError(
                        f"elevenlabs: refused: {err.get('error_type')}: {err.get('message')}"
                    )
            try:
                wire_in = parse_format(str(meta.get("user_input_audio_format", "")))
                wire_out = parse_format(str(meta.get("agent_output_audio_format", "")))
            except ValueError as exc:
                raise ConnectError(f"elevenlabs: {exc}") from None
            self._setup_audio(config.audio, wire_in, wire_out)
        except TimeoutError:
            await ws.close()
            raise ConnectTimeoutError(
                f"elevenlabs: no conversation_initiation_metadata within {s.connect_timeout_s:g} s"
            ) from None
        except BaseException:
            await ws.close()
            raise
        self._spawn(self._read_loop(ws), "read")
        return str(meta.get("conversation_id") or f"elevenlabs-{config.call_id}")

    def _initiation(self, config: VoiceModelConfig) -> dict[str, Any]:
        s = self.settings
        msg: dict[str, Any] = {"type": "conversation_initiation_client_data"}
        agent: dict[str, Any] = {}
        if s.first_message is not None:
            agent["first_message"] = s.first_message
        if s.prompt is not None:
            agent["prompt"] = {"prompt": s.prompt}
        if agent:
            msg["conversation_config_override"] = {"agent": agent}
        if s.user_id is not None:
            msg["user_id"] = s.user_id
        if config.metadata:
            msg["dynamic_variables"] = dict(config.metadata)
        return msg

    async def _signed_url(self) -> str:
        """A signed socket URL for a private agent (GET .../get-signed-url)."""
        s = self.settings
        url = f"{s.base_url.rstrip('/')}/v1/convai/conversation/get-signed-url"
        try:
            async with httpx.AsyncClient(timeout=s.connect_timeout_s) as http:
                resp = await http.get(
                    url, params={"agent_id": s.agent_id}, headers={"xi-api-key": s.api_key or ""}
                )
        except httpx.HTTPError as exc:
            raise ConnectError(f"elevenlabs: signed URL request failed: {exc!r}") from None
        if resp.status_code != 200:
            raise ConnectError(f"elevenlabs: signed URL refused: HTTP {resp.status_code}")
        signed = resp.json().get("signed_url")
        if not isinstance(signed, str) or not signed.startswith(("ws://", "wss://")):
            raise ConnectError("elevenlabs: signed URL response has no usable 'signed_url'")
        return signed

    async def _send_audio(self, chunk: bytes) -> None:
        wire = self._caller_to_wire(chunk)
        if wire:
            await self._send({"user_audio_chunk": base64.b64encode(wire).decode()})

    async def _close(self) -> None:
        self._cancel_idle_flush()
        await super()._close()

    # -- server messages ---------------------------------------------------------------

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "audio":
            self._on_audio(msg.get("audio_event") or {})
        elif kind == "ping":
            await self._pong(msg)
        elif kind == "interruption":
            self._on_interruption(msg.get("interruption_event") or {})
        elif kind == "tentative_user_transcript":
            ev = msg.get("tentative_user_transcription_event") or {}
            self._caller_started()
            self._emit(Transcript(role="caller", text=str(ev.get("user_transcript", "")),
                                  final=False))
        elif kind == "user_transcript":
            ev = msg.get("user_transcription_event") or {}
            self._caller_started()
            self._emit(Transcript(role="caller", text=str(ev.get("user_transcript", "")),
                                  final=True))
            self._caller_ended()
        elif kind == "agent_response":
            ev = msg.get("agent_response_event") or {}
            self._emit(Transcript(role="agent", text=str(ev.get("agent_response", "")).strip()))
        elif kind == "agent_response_correction":
            ev = msg.get("agent_response_correction_event") or {}
            text = str(ev.get("corrected_agent_response", "")).strip()
            self._emit(Transcript(role="agent", text=text))
        elif kind == "error":
            ev = msg.get("error_event") or {}
            code = str(ev.get("error_type") or ev.get("code") or "elevenlabs_error")
            text = str(ev.get("message") or ev.get("reason") or "")
            self._last_peer_error = f"{code}: {text}"
            self.log.warning("peer_error", code=code, close_code=ev.get("code"), message=text)
            self._emit(Error(code=code, message=text))
        else:
            self.counters["peer_events_ignored"] += 1

    async def _pong(self, msg: dict[str, Any]) -> None:
        ev = msg.get("ping_event") or {}
        await self._send({"type": "pong", "event_id": ev.get("event_id")})

    def _on_audio(self, ev: dict[str, Any]) -> None:
        try:
            event_id = int(ev.get("event_id", 0))
            audio = base64.b64decode(ev.get("audio_base_64") or "", validate=True)
        except (TypeError, ValueError, binascii.Error):
            self.counters["peer_audio_undecodable"] += 1
            return
        if event_id <= self._last_interrupt_id:
            # Audio of a reply the caller already cut off (SDK behaviour).
            self.counters["agent_audio_after_interrupt"] += 1
            return
        self._agent_audio(audio)
        self._cancel_idle_flush()
        self._idle_flush = asyncio.get_running_loop().call_later(
            AUDIO_IDLE_FLUSH_S, self._flush_idle
        )

    def _flush_idle(self) -> None:
        self._idle_flush = None
        if self.state == "connected":
            self._agent_audio_end()

    def _cancel_idle_flush(self) -> None:
        if self._idle_flush is not None:
            self._idle_flush.cancel()
            self._idle_flush = None

    def _on_interruption(self, ev: dict[str, Any]) -> None:
        try:
            self._last_interrupt_id = max(self._last_interrupt_id, int(ev.get("event_id", 0)))
        except (TypeError, ValueError):
            self.counters["peer_events_malformed"] += 1
        self._cancel_idle_flush()
        self._agent_audio_drop()
        # ElevenLabs interrupts only on caller speech: the caller has started talking.
        self._caller_started()
        self._emit(Interruption(t_ms=self.caller_ms))
        self.counters["interruptions"] += 1

    def _caller_started(self) -> None:
        if self._caps.server_vad and not self._caller_speaking:
            self._caller_speaking = True
            self._emit(SpeechStarted(t_ms=self.caller_ms, source="provider"))

    def _caller_ended(self) -> None:
        if self._caps.server_vad and self._caller_speaking:
            self._caller_speaking = False
            self._emit(SpeechEnded(t_ms=self.caller_ms, source="provider"))

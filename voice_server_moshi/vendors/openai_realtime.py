"""OpenAI Realtime (GA) adapter over WebSocket.

Wire protocol: reference/vendor-protocols.md section A. Server VAD decides turns; the server
cancels its reply when the caller barges in, and the adapter then tells it how much of the
reply the caller actually heard (``conversation.item.truncate``), because over WebSocket the
client owns playout.

Playout: the adapter counts the agent audio it emitted as ``audio-chunk``. A host that knows
how much it has really played (its jitter buffer lags behind) calls
:meth:`OpenAIRealtimeAdapter.report_played_ms`; without it, emitted audio counts as played.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from ..adapter import VoiceModelConfig
from ..audio.call_audio import WireFormat
from ..capabilities import Capabilities
from ..errors import ConnectError, ConnectTimeoutError, LifecycleError
from ..events import Error, Interruption, SpeechEnded, SpeechStarted, Transcript
from ._base import WsVendorAdapter
from ._ws import http_to_ws, open_ws, recv_json
from .openai_say import OpenAISay
from .settings import OpenAIRealtimeSettings

_G711_TYPE = {"mulaw": "audio/pcmu", "alaw": "audio/pcma"}


def wire_format_for(call_encoding: str, choice: str) -> tuple[WireFormat, dict[str, Any]]:
    """The session's audio format for a call (ADR 0051): G.711 pass-through where possible."""
    if choice == "pcm24k" or (choice == "auto" and call_encoding == "pcm16"):
        return WireFormat("pcm16", 24000), {"type": "audio/pcm", "rate": 24000}
    enc = call_encoding if call_encoding in _G711_TYPE else "mulaw"
    return WireFormat(enc, 8000), {"type": _G711_TYPE[enc]}  # type: ignore[arg-type]


class OpenAIRealtimeAdapter(WsVendorAdapter):
    """The ``openai-realtime`` adapter. See the module docstring for playout reporting."""

    adapter_name: ClassVar[str] = "openai-realtime"
    default_capabilities: ClassVar[Capabilities] = Capabilities(
        full_duplex=False,
        server_vad=True,
        interruption=True,
        caller_transcript=True,
        agent_transcript=True,
        steering=True,
    )

    def __init__(self, settings: OpenAIRealtimeSettings | None = None) -> None:
        self.settings = settings or OpenAIRealtimeSettings()
        super().__init__(max_queued_events=self.settings.max_queued_events)
        self._caps = Capabilities(
            full_duplex=False,
            server_vad=True,
            interruption=True,
            caller_transcript=self.settings.input_transcription_model is not None,
            agent_transcript=True,
            steering=True,
        )
        self._say = OpenAISay(self._send, self._emit)
        self._response_id: str | None = None
        self._item_id: str | None = None  # assistant audio item being played
        self._item_start_ms = 0.0  # emitted_ms when that item's first audio went out
        self._item_received_ms = 0.0  # audio of that item received from the server
        self._interrupted_items: set[str] = set()
        self._played_ms: float | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    # -- steering (ADR 0070): the model is asked to say the line -------------------------

    async def say_text(self, text: str) -> str:
        self._require_connected()
        return await self._say.say_text(text)

    async def say_audio(self, audio: bytes, text: str = "", *, sample_rate: int = 24000) -> str:
        return await self._say.say_audio(audio, text)

    async def cancel_say(self, flush: bool = True) -> None:
        self._require_connected()
        await self._say.cancel(flush)

    def _require_connected(self) -> None:
        if self.state != "connected":
            raise LifecycleError(f"openai-realtime: steering needs a connected session "
                                 f"(state {self.state!r})")

    def report_played_ms(self, ms: float) -> None:
        """Tell the adapter how much agent audio the caller has heard so far.

        ``ms`` is cumulative over the session (all ``audio-chunk`` audio played out since
        ``connected``), never more than was emitted. Used on barge-in to truncate the
        server's copy of the reply to what the caller heard. Optional: without it, every
        emitted chunk counts as played; once called, the latest report is what counts, so a
        host that reports keeps reporting (e.g. on each frame it plays).
        """
        if ms < 0:
            raise ValueError(f"played ms must be >= 0, got {ms}")
        self._played_ms = min(float(ms), self.emitted_ms)

    # -- session -----------------------------------------------------------------------

    async def _open(self, config: VoiceModelConfig) -> str:
        s = self.settings
        wire, fmt_json = wire_format_for(config.audio.encoding, s.wire_format)
        self._setup_audio(config.audio, wire, wire)
        token = await self._client_secret() if s.use_client_secret else s.api_key
        url = f"{http_to_ws(s.base_url.rstrip('/'))}/realtime?model={quote(s.model)}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await open_ws(url, headers=headers, timeout_s=s.connect_timeout_s, vendor="openai")
        self._ws = ws
        try:
            created = await recv_json(ws, s.connect_timeout_s)
            if created.get("type") != "session.created":
                raise ConnectError(
                    f"openai: expected session.created first, got {created.get('type')!r}"
                )
            session_id = str(created.get("session", {}).get("id") or "")
            await self._send({"type": "session.update", "session": self._session(fmt_json)})
            while True:
                msg = await recv_json(ws, s.connect_timeout_s)
                if msg.get("type") == "session.updated":
                    break
                if msg.get("type") == "error":
                    err = msg.get("error") or {}
                    raise ConnectError(
                        f"openai: session.update refused: {err.get('code')}: {err.get('message')}"
                    )
        except TimeoutError:
            await ws.close()
            raise ConnectTimeoutError(
                f"openai: no session.created/updated within {s.connect_timeout_s:g} s"
            ) from None
        except BaseException:
            await ws.close()
            raise
        self._spawn(self._read_loop(ws), "read")
        return session_id or f"openai-{config.call_id}"

    def _session(self, fmt: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        audio_in: dict[str, Any] = {
            "format": fmt,
            "turn_detection": {
                "type": "server_vad",
                "threshold": s.vad_threshold,
                "prefix_padding_ms": s.vad_prefix_padding_ms,
                "silence_duration_ms": s.vad_silence_duration_ms,
                "create_response": True,
                "interrupt_response": True,
            },
        }
        if s.input_transcription_model:
            audio_in["transcription"] = {"model": s.input_transcription_model}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": s.model,
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": {"format": fmt, "voice": s.voice}},
        }
        if s.instructions:
            session["instructions"] = s.instructions
        return session

    async def _client_secret(self) -> str:
        """Mint an ephemeral client secret (POST /realtime/client_secrets)."""
        s = self.settings
        body = {
            "expires_after": {"anchor": "created_at", "seconds": s.client_secret_ttl_s},
            "session": {"type": "realtime", "model": s.model},
        }
        url = f"{s.base_url.rstrip('/')}/realtime/client_secrets"
        try:
            async with httpx.AsyncClient(timeout=s.connect_timeout_s) as http:
                resp = await http.post(
                    url, json=body, headers={"Authorization": f"Bearer {s.api_key}"}
                )
        except httpx.HTTPError as exc:
            raise ConnectError(f"openai: client secret request failed: {exc!r}") from None
        if resp.status_code != 200:
            raise ConnectError(f"openai: client secret request refused: HTTP {resp.status_code}")
        value = resp.json().get("value")
        if not isinstance(value, str) or not value:
            raise ConnectError("openai: client secret response has no 'value'")
        return value

    async def _send_audio(self, chunk: bytes) -> None:
        wire = self._caller_to_wire(chunk)
        if wire:
            await self._send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(wire).decode()}
            )

    # -- server events -----------------------------------------------------------------

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "response.output_audio.delta":
            self._say.on_audio(str(msg.get("response_id") or ""))
            self._on_audio_delta(msg)
        elif kind == "response.output_audio.done":
            if msg.get("item_id") not in self._interrupted_items:
                self._agent_audio_end()
        elif kind == "response.created":
            self._response_id = (msg.get("response") or {}).get("id") or "?"
            self._say.on_created(msg.get("response") or {})
        elif kind == "response.done":
            self._on_response_done(msg.get("response") or {})
            await self._say.on_done(msg.get("response") or {})
        elif kind == "input_audio_buffer.speech_started":
            await self._on_speech_started(float(msg.get("audio_start_ms") or 0))
        elif kind == "input_audio_buffer.speech_stopped":
            self._emit(SpeechEnded(t_ms=float(msg.get("audio_end_ms") or 0), source="provider"))
        elif kind == "response.output_audio_transcript.delta":
            if msg.get("item_id") not in self._interrupted_items and msg.get("delta"):
                self._emit(Transcript(role="agent", text=str(msg["delta"]), final=False))
        elif kind == "response.output_audio_transcript.done":
            if msg.get("item_id") not in self._interrupted_items:
                text = str(msg.get("transcript", ""))
                self._emit(Transcript(role="agent", text=text, final=True))
        elif kind == "conversation.item.input_audio_transcription.delta":
            if self._caps.caller_transcript and msg.get("delta"):
                self._emit(Transcript(role="caller", text=str(msg["delta"]), final=False))
        elif kind == "conversation.item.input_audio_transcription.completed":
            if self._caps.caller_transcript:
                text = str(msg.get("transcript", ""))
                self._emit(Transcript(role="caller", text=text, final=True))
        elif kind == "conversation.item.input_audio_transcription.failed":
            err = msg.get("error") or {}
            self._emit(Error(code="transcription_failed", message=str(err.get("message", ""))))
        elif kind == "error":
            err = msg.get("error") or {}
            code = str(err.get("code") or err.get("type") or "openai_error")
            self._last_peer_error = f"{code}: {err.get('message', '')}"
            self.log.warning("peer_error", code=code, message=err.get("message"))
            self._emit(Error(code=code, message=str(err.get("message", ""))))
        else:
            self.counters["peer_events_ignored"] += 1

    def _on_audio_delta(self, msg: dict[str, Any]) -> None:
        item_id = str(msg.get("item_id") or "")
        if item_id in self._interrupted_items:
            self.counters["agent_audio_after_interrupt"] += 1
            return
        try:
            audio = base64.b64decode(msg.get("delta") or "", validate=True)
        except (binascii.Error, ValueError):
            self.counters["peer_audio_undecodable"] += 1
            return
        if item_id != self._item_id:
            self._item_id = item_id
            self._item_start_ms = self.emitted_ms
            self._item_received_ms = 0.0
        assert self._from_wire is not None
        self._item_received_ms += self._from_wire.src.duration_ms(len(audio))
        self._agent_audio(audio)

    def _on_response_done(self, response: dict[str, Any]) -> None:
        self._response_id = None
        if response.get("status") == "failed":
            err = (response.get("status_details") or {}).get("error") or {}
            self._emit(
                Error(
                    code=str(err.get("code") or "response_failed"),
                    message=str(err.get("message") or "the response failed"),
                )
            )

    def _heard_ms(self) -> float:
        """How much of the current assistant item the caller has heard."""
        played = self.emitted_ms if self._played_ms is None else self._played_ms
        return max(0.0, min(played - self._item_start_ms, self._item_received_ms))

    async def _on_speech_started(self, t_ms: float) -> None:
        self._emit(SpeechStarted(t_ms=t_ms, source="provider"))
        item = self._item_id
        if item is None:
            return
        heard = self._heard_ms()
        still_playing = heard < self._item_received_ms
        if self._response_id is None and not still_playing:
            return  # the reply was over and fully heard: nothing to cut
        # Barge-in: the server cancels its reply (interrupt_response); we flush ours and
        # tell it what the caller actually heard.
        self._interrupted_items.add(item)
        self._item_id = None
        self._agent_audio_drop()
        self._emit(Interruption(t_ms=t_ms))
        self.counters["interruptions"] += 1
        await self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": item,
                "content_index": 0,
                "audio_end_ms": int(heard),
            }
        )

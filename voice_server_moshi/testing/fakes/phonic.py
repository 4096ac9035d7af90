"""A fake Phonic STS server: reference/vendor-protocols.md section C.

After ``config`` it sends ``conversation_created`` then ``ready_to_start_conversation``, and
from then on a continuous output stream paced to real time: silence between agent turns,
agent speech between ``assistant_started_speaking`` and ``assistant_finished_speaking``
(sent ahead of real time when the config asks ``stream_ahead_of_real_time``). Conversations
outlive their socket for ``grace_s`` so a client can resume with ``reconnect_conv_id``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ._server import FakePeer, FakeSession
from ._signal import SpeechDetector, WireEncoding, decode, encode, silence, tone

FORMATS = ("pcm_44100", "pcm_24000", "pcm_16000", "pcm_8000", "mulaw_8000")
MAX_INPUT_CHUNK_MS = 40


def _wire(fmt: str) -> tuple[WireEncoding, int]:
    kind, _, rate = fmt.partition("_")
    return ("mulaw" if kind == "mulaw" else "pcm16"), int(rate)


@dataclass
class _Conversation:
    id: str
    config: dict[str, Any]
    detector: SpeechDetector
    ended: bool = False
    dropped_at: float | None = None
    speak_ms: float = 0.0  # agent speech still to send
    spoken: list[str] = field(default_factory=list)
    speaking: bool = False
    paced: bool | None = None  # per-reply override of stream_ahead_of_real_time
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FakePhonic(FakePeer):
    """Scriptable fake of ``wss://api.phonic.ai/v1/sts/ws``.

    Args:
        api_key: required Bearer credential.
        reply_ms: agent reply after each caller turn (0: none).
        chunk_ms: audio per output ``audio_chunk``.
        grace_s: how long a dropped conversation can be resumed.
        idle_audio: stream paced silence between agent turns, as the service does.
    """

    ws_path = "/v1/sts/ws"
    vendor = "phonic"

    def __init__(
        self,
        *,
        api_key: str | None = "ph_test",
        reply_ms: int = 0,
        reply_text: str = "hello from the fake agent",
        caller_transcript: str = "hello",
        chunk_ms: int = 20,
        grace_s: float = 30.0,
        idle_audio: bool = True,
    ) -> None:
        super().__init__(api_key=api_key)
        self.reply_ms = reply_ms
        self.reply_text = reply_text
        self.caller_transcript = caller_transcript
        self.chunk_ms = chunk_ms
        self.grace_s = grace_s
        self.idle_audio = idle_audio
        self.conversations: dict[str, _Conversation] = {}
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return self.ws_url

    def _conv(self, s: FakeSession | None = None) -> _Conversation:
        conv: _Conversation = (s or self.session).state["conv"]
        return conv

    # -- protocol ----------------------------------------------------------------------

    async def _serve(self, s: FakeSession) -> None:
        resume = s.query.get("reconnect_conv_id")
        if resume is not None:
            conv = self.conversations.get(resume)
            if conv is None or conv.dropped_at is None or (
                time.monotonic() - conv.dropped_at > self.grace_s
            ):
                await s.close(4800, "session expired")
                return
            if conv.ended:
                await s.close(4801, "invalid state")
                return
            conv.dropped_at = None
            s.state["conv"] = conv
            await s.send({"type": "conversation_reconnected", "conversation_id": conv.id})
        else:
            first = await self._receive(s)
            if first is None:
                return
            conv_or_none = await self._configure(s, first)
            if conv_or_none is None:
                return
            conv = conv_or_none
        s.ready.set()
        streamer = self.spawn(self._stream(s, conv))
        try:
            while (msg := await self._receive(s)) is not None:
                await self._on_client(s, conv, msg)
        finally:
            streamer.cancel()
            if not conv.ended and s.ws.close_code != 1000:
                conv.dropped_at = time.monotonic()

    async def _configure(self, s: FakeSession, msg: dict[str, Any]) -> _Conversation | None:
        if msg.get("type") != "config":
            await self._error(s, "The first message must be a config message", code="bad_config")
            await s.close(1008, "expected config")
            return None
        bad = {k: f"must be one of {', '.join(FORMATS)}" for k in ("input_format", "output_format")
               if msg.get(k, "pcm_44100") not in FORMATS}
        if bad:
            await s.send({"type": "error", "error": {"message": "Invalid config"},
                          "param_errors": bad})
            await s.close(1008, "invalid config")
            return None
        conv = _Conversation(
            id=f"conv_{next(self._ids):06d}", config=msg,
            detector=SpeechDetector(_wire(msg.get("input_format", "pcm_44100"))[1]))
        self.conversations[conv.id] = conv
        s.state["conv"] = conv
        await s.send({"type": "conversation_created", "conversation_id": conv.id})
        await s.send({"type": "ready_to_start_conversation"})
        if msg.get("welcome_message"):
            self._start_speaking(conv, self.reply_ms or 500)
        return conv

    async def _error(self, s: FakeSession, message: str, code: str | None = None) -> None:
        await s.send({"type": "error", "error": {"message": message, "code": code}})

    async def _on_client(self, s: FakeSession, conv: _Conversation, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "audio_chunk":
            await self._on_audio(s, conv, msg)
        elif kind in ("mute", "unmute", "update_system_prompt", "add_system_message",
                      "set_external_id", "tool_call_output", "generate_reply", "say", "reset",
                      "update_tools_subset"):
            pass
        else:
            await self._error(s, f"Unknown message type: {kind!r}", code="unknown_message")

    async def _on_audio(self, s: FakeSession, conv: _Conversation, msg: dict[str, Any]) -> None:
        try:
            data = base64.b64decode(str(msg.get("audio", "")), validate=True)
        except (binascii.Error, ValueError):
            await self._error(s, "audio is not base64", code="invalid_audio")
            return
        enc, rate = _wire(conv.config.get("input_format", "pcm_44100"))
        pcm = decode(data, enc)
        if 1000 * len(pcm) / rate > MAX_INPUT_CHUNK_MS + 1e-6:
            await self._error(s, f"Audio chunks must be at most {MAX_INPUT_CHUNK_MS} ms",
                              code="audio_chunk_too_long")
            return
        for what, _t in conv.detector.feed(pcm):
            if what == "start":
                await self.caller_started(s)
            else:
                await self.caller_stopped(s)

    async def caller_started(self, s: FakeSession | None = None) -> None:
        s = s or self.session
        conv = self._conv(s)
        await s.send({"type": "user_started_speaking"})
        if conv.speaking:
            # The service cuts the assistant off and says what it got to say.
            conv.speaking = False
            conv.speak_ms = 0.0
            await s.send({"type": "interrupted_response", "text": " ".join(conv.spoken)})
            conv.done.set()

    async def caller_stopped(self, s: FakeSession | None = None) -> None:
        s = s or self.session
        conv = self._conv(s)
        await s.send({"type": "user_finished_speaking"})
        await s.send({"type": "input_text", "text": self.caller_transcript, "language": "en"})
        if self.reply_ms:
            self._start_speaking(conv, self.reply_ms)

    def _start_speaking(self, conv: _Conversation, ms: float, paced: bool | None = None) -> None:
        conv.paced = paced
        conv.speak_ms = ms
        conv.spoken = []
        conv.done = asyncio.Event()

    async def _stream(self, s: FakeSession, conv: _Conversation) -> None:
        """The continuous output stream: one chunk per ``chunk_ms`` of (paced) time."""
        enc, rate = _wire(conv.config.get("output_format", "pcm_44100"))
        words = self.reply_text.split()
        pos = 0
        total = 0.0
        next_t = time.monotonic()
        while not s.closed.is_set():
            if conv.speak_ms > 0:
                if not conv.speaking:
                    conv.speaking = True
                    total = conv.speak_ms
                    await s.send({"type": "assistant_started_speaking"})
                step = min(self.chunk_ms, conv.speak_ms)
                pcm = tone(step, rate, start_sample=pos)
                pos += len(pcm)
                conv.speak_ms -= step
                n_words = min(len(words), int(len(words) * (1 - conv.speak_ms / total)) or 1)
                text = ""
                if len(conv.spoken) < n_words:
                    text = " ".join(words[len(conv.spoken):n_words])
                    conv.spoken = words[:n_words]
                await s.send({"type": "audio_chunk",
                              "audio": base64.b64encode(encode(pcm, enc)).decode(),
                              "text": text})
                if conv.speak_ms <= 0 and conv.speaking:
                    conv.speaking = False
                    await s.send({"type": "assistant_finished_speaking"})
                    conv.done.set()
                ahead = bool(conv.config.get("stream_ahead_of_real_time", False))
                if ahead and not conv.paced:
                    await asyncio.sleep(0)
                    next_t = time.monotonic()
                    continue
            elif self.idle_audio:
                await s.send({"type": "audio_chunk",
                              "audio": base64.b64encode(silence(self.chunk_ms, rate, enc)).decode(),
                              "text": ""})
            next_t += self.chunk_ms / 1000
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))

    # -- scripting ---------------------------------------------------------------------

    async def speak(self, ms: int) -> None:
        """The assistant says ``ms`` of audio; returns when it finished or was cut off."""
        conv = self._conv()
        self._start_speaking(conv, ms)
        await conv.done.wait()

    def start_speaking(self, ms: int, *, paced: bool | None = None) -> None:
        """Start a reply in the background; ``paced=True`` sends it at real time even when
        the client asked for ``stream_ahead_of_real_time``."""
        self._start_speaking(self._conv(), ms, paced)

    async def send_error(self, message: str = "Internal processing error",
                         code: str | None = "internal_error") -> None:
        await self._error(self.session, message, code)

    async def send_warning(self, message: str = "Audio is too quiet",
                           code: str | None = "low_audio") -> None:
        await self.session.send({"type": "warning", "warning": {"message": message,
                                                                "code": code}})

    async def end_conversation(self) -> None:
        """The assistant ends the call: ``assistant_ended_conversation`` then close 4600."""
        conv = self._conv()
        conv.ended = True
        await self.session.send({"type": "assistant_ended_conversation"})
        await self.session.close(4600, "assistant ended conversation")

    async def restart(self, code: int = 1012, reason: str = "restarting") -> None:
        """A service restart: close with 1012 (or 1001 'restarting'); resumable."""
        await self.session.close(code, reason)


@contextlib.asynccontextmanager
async def fake_phonic(**kwargs: Any) -> AsyncIterator[FakePhonic]:
    """Run a :class:`FakePhonic` on loopback; ``url`` is its ``ws://`` base URL."""
    async with FakePhonic(**kwargs) as fake:
        yield fake

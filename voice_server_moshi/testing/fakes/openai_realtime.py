"""A fake OpenAI Realtime (GA) server: reference/vendor-protocols.md section A.

Speaks the GA event names, with every field the ``openai`` SDK's event types require (a test
parses everything it sends with ``RealtimeServerEvent``). Server VAD is an energy detector
on the caller audio, timed in stream milliseconds; replies are a tone in the session's output
format, sent faster than real time unless ``pace`` says otherwise (the real service also
generates faster than real time).
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

from ._openai_say import say_request
from ._server import FakePeer, FakeSession
from ._signal import SpeechDetector, WireEncoding, decode, encode, tone

_FORMATS: dict[str, tuple[WireEncoding, int]] = {
    "audio/pcm": ("pcm16", 24000),
    "audio/pcmu": ("mulaw", 8000),
    "audio/pcma": ("alaw", 8000),
}
SESSION_EXPIRED = "Your session hit the maximum duration of 60 minutes."


@dataclass
class _Response:
    id: str
    item_id: str
    text: str
    task: asyncio.Task[None] | None = None
    audio_ms: float = 0.0
    spoken_words: list[str] = field(default_factory=list)
    done: bool = False
    metadata: dict[str, Any] | None = None


class FakeOpenAIRealtime(FakePeer):
    """Scriptable fake of ``wss://api.openai.com/v1/realtime``.

    Args:
        api_key: required Bearer credential (or a secret minted by :meth:`mock_rest`).
        reply_ms: audio length of a reply the server creates by itself after a caller turn
            (server VAD ``create_response``) or on ``response.create``; 0: no auto reply.
        reply_text: transcript of every reply.
        caller_transcript: what input transcription says the caller said.
        chunk_ms: audio per ``response.output_audio.delta``.
        pace: 0 sends replies as fast as possible; 1.0 at real time.
    """

    ws_path = "/v1/realtime"
    vendor = "openai"

    def __init__(
        self,
        *,
        api_key: str | None = "sk-test",
        reply_ms: int = 0,
        reply_text: str = "hello from the fake agent",
        caller_transcript: str = "hello",
        chunk_ms: int = 50,
        pace: float = 0.0,
    ) -> None:
        super().__init__(api_key=api_key)
        self.reply_ms = reply_ms
        self.reply_text = reply_text
        self.caller_transcript = caller_transcript
        self.chunk_ms = chunk_ms
        self.pace = pace
        self.client_secrets: set[str] = set()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"{self.http_url}/v1"

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def _authorized(self, request: Any, query: dict[str, str]) -> bool:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        return self.api_key is None or token == self.api_key or token in self.client_secrets

    # -- REST (respx) ------------------------------------------------------------------

    def mock_rest(self, router: Any) -> None:
        """Add ``POST /v1/realtime/client_secrets`` to a ``respx`` router."""
        import httpx

        def mint(request: httpx.Request) -> httpx.Response:
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return httpx.Response(401, json={"error": {"message": "Incorrect API key",
                                                           "type": "invalid_request_error"}})
            body = _json(request.content)
            ttl = int((body.get("expires_after") or {}).get("seconds", 600))
            secret = f"ek_{next(self._ids):08d}"
            self.client_secrets.add(secret)
            return httpx.Response(200, json={
                "value": secret,
                "expires_at": int(time.time()) + ttl,
                "session": {"type": "realtime", **(body.get("session") or {})},
            })

        router.post(f"{self.url}/realtime/client_secrets").mock(side_effect=mint)

    # -- protocol ----------------------------------------------------------------------

    def _default_session(self, model: str) -> dict[str, Any]:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self._id("sess"),
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "create_response": True,
                        "interrupt_response": True,
                        "idle_timeout_ms": None,
                    },
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "voice": "marin",
                    "speed": 1.0,
                },
            },
        }

    async def _serve(self, s: FakeSession) -> None:
        st = s.state
        st["session"] = self._default_session(s.query.get("model", "gpt-realtime"))
        st["buffer_ms"] = 0.0
        st["items"] = {}  # item_id -> audio ms sent
        st["response"] = None
        st["last_item"] = None
        self._reset_detector(s)
        await self._event(s, "session.created", session=st["session"])
        s.ready.set()
        while (msg := await self._receive(s)) is not None:
            await self._on_client(s, msg)

    def _reset_detector(self, s: FakeSession) -> None:
        audio_in = s.state["session"]["audio"]["input"]
        enc, rate = _FORMATS[audio_in["format"]["type"]]
        td = audio_in.get("turn_detection") or {}
        s.state["in_format"] = (enc, rate)
        s.state["detector"] = SpeechDetector(
            rate, silence_ms=int(td.get("silence_duration_ms") or 500)
        ) if td else None

    async def _event(self, s: FakeSession, kind: str, **fields: Any) -> None:
        await s.send({"type": kind, "event_id": self._id("event"), **fields})

    async def _error(self, s: FakeSession, message: str, *, code: str | None = None,
                     param: str | None = None, event_id: str | None = None,
                     type: str = "invalid_request_error") -> None:
        await self._event(s, "error", error={
            "type": type, "code": code, "message": message, "param": param,
            "event_id": event_id,
        })

    async def _on_client(self, s: FakeSession, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        eid = msg.get("event_id")
        if kind == "input_audio_buffer.append":
            await self._on_append(s, msg)
        elif kind == "session.update":
            await self._on_session_update(s, msg.get("session") or {}, eid)
        elif kind == "conversation.item.truncate":
            await self._on_truncate(s, msg, eid)
        elif kind == "response.create":
            ms, text, meta = say_request(msg.get("response") or {}, self.reply_ms or 500)
            self.start_reply(ms, text, session=s, metadata=meta)
        elif kind == "response.cancel":
            if s.state["response"] is None:
                await self._error(s, "Cancellation failed: no active response found",
                                  code="response_cancel_not_active", event_id=eid)
            else:
                await self._cancel(s, "client_cancelled")
        elif kind == "input_audio_buffer.clear":
            s.state["buffer_ms"] = 0.0
            await self._event(s, "input_audio_buffer.cleared")
        elif kind == "input_audio_buffer.commit":
            await self._error(s, "Error committing input audio buffer: buffer too small.",
                              code="input_audio_buffer_commit_empty", event_id=eid)
        else:
            await self._error(s, f"Invalid value: {kind!r}.", code="invalid_value",
                              param="type", event_id=eid)

    async def _on_session_update(self, s: FakeSession, upd: dict[str, Any],
                                 eid: str | None) -> None:
        if upd.get("type") != "realtime":
            await self._error(s, "Missing required parameter: 'session.type'.",
                              code="missing_required_parameter", param="session.type",
                              event_id=eid)
            return
        audio = upd.get("audio") or {}
        for side in ("input", "output"):
            fmt = (audio.get(side) or {}).get("format")
            if fmt is None:
                continue
            if fmt.get("type") not in _FORMATS or (
                fmt.get("type") == "audio/pcm" and fmt.get("rate", 24000) != 24000
            ):
                await self._error(s, f"Invalid value: {fmt!r}.", code="invalid_value",
                                  param=f"session.audio.{side}.format", event_id=eid)
                return
        cur = s.state["session"]
        for key, value in upd.items():
            if key == "audio":
                for side, conf in value.items():
                    cur["audio"][side].update(conf)
            else:
                cur[key] = value
        self._reset_detector(s)
        await self._event(s, "session.updated", session=cur)

    async def _on_append(self, s: FakeSession, msg: dict[str, Any]) -> None:
        try:
            data = base64.b64decode(msg.get("audio") or "", validate=True)
        except (binascii.Error, ValueError):
            await self._error(s, "Invalid 'audio'. Expected base64-encoded audio bytes.",
                              code="invalid_value", param="audio", event_id=msg.get("event_id"))
            return
        enc, rate = s.state["in_format"]
        pcm = decode(data, enc)
        s.state["buffer_ms"] += 1000.0 * len(pcm) / rate
        det: SpeechDetector | None = s.state["detector"]
        if det is None:
            return
        for what, t_ms in det.feed(pcm):
            if what == "start":
                await self.caller_started(int(t_ms), s)
            else:
                await self.caller_stopped(int(t_ms), s)

    async def _on_truncate(self, s: FakeSession, msg: dict[str, Any], eid: str | None) -> None:
        item_id = msg.get("item_id")
        end = msg.get("audio_end_ms")
        sent = s.state["items"].get(item_id)
        if sent is None:
            await self._error(s, f"Item with item_id '{item_id}' not found.",
                              code="item_not_found", param="item_id", event_id=eid)
        elif not isinstance(end, int) or end < 0 or end > sent + 1:
            await self._error(s, f"Audio content of {sent:.0f}ms is shorter than {end}ms.",
                              code="invalid_value", param="audio_end_ms", event_id=eid)
        else:
            await self._event(s, "conversation.item.truncated", item_id=item_id,
                              content_index=int(msg.get("content_index", 0)), audio_end_ms=end)

    # -- caller turn (server VAD) ------------------------------------------------------

    async def caller_started(self, t_ms: int | None = None,
                             session: FakeSession | None = None) -> None:
        """Server VAD heard the caller start (also callable from a test: at ``t_ms``, by
        default the audio received so far)."""
        s = session or self.session
        t_ms = int(s.state["buffer_ms"]) if t_ms is None else t_ms
        prefix = int((s.state["session"]["audio"]["input"].get("turn_detection") or {})
                     .get("prefix_padding_ms", 300))
        item = self._id("item")
        s.state["user_item"] = item
        await self._event(s, "input_audio_buffer.speech_started",
                          audio_start_ms=max(0, t_ms - prefix), item_id=item)
        td = s.state["session"]["audio"]["input"].get("turn_detection") or {}
        if s.state["response"] is not None and td.get("interrupt_response", True):
            await self._cancel(s, "turn_detected")

    async def caller_stopped(self, t_ms: int | None = None,
                             session: FakeSession | None = None) -> None:
        """Server VAD heard the caller stop: commit, transcribe, maybe reply."""
        s = session or self.session
        t_ms = int(s.state["buffer_ms"]) if t_ms is None else t_ms
        item = s.state.get("user_item") or self._id("item")
        await self._event(s, "input_audio_buffer.speech_stopped", audio_end_ms=t_ms, item_id=item)
        await self._event(s, "input_audio_buffer.committed", item_id=item,
                          previous_item_id=s.state["last_item"])
        user_item = {"id": item, "type": "message", "role": "user", "status": "completed",
                     "object": "realtime.item",
                     "content": [{"type": "input_audio", "transcript": None}]}
        await self._event(s, "conversation.item.added", item=user_item,
                          previous_item_id=s.state["last_item"])
        s.state["last_item"] = item
        audio_in = s.state["session"]["audio"]["input"]
        if audio_in.get("transcription"):
            await self._event(
                s, "conversation.item.input_audio_transcription.completed", item_id=item,
                content_index=0, transcript=self.caller_transcript,
                usage={"type": "duration", "seconds": 1.0},
            )
        td = audio_in.get("turn_detection") or {}
        if td.get("create_response", True) and self.reply_ms:
            self.start_reply(self.reply_ms, session=s)

    # -- agent replies -----------------------------------------------------------------

    def start_reply(self, ms: int, text: str | None = None, pace: float | None = None,
                    session: FakeSession | None = None,
                    metadata: dict[str, Any] | None = None) -> asyncio.Task[None]:
        """Start a reply of ``ms`` of audio in the background (cancelled by barge-in)."""
        s = session or self.session
        resp = _Response(id=self._id("resp"), item_id=self._id("item"),
                         text=text if text is not None else self.reply_text,
                         metadata=metadata)
        s.state["response"] = resp
        resp.task = self.spawn(self._reply(s, resp, ms, self.pace if pace is None else pace))
        return resp.task

    async def speak(self, ms: int, text: str | None = None, pace: float | None = None) -> None:
        """A whole reply of ``ms`` of agent audio; returns when it was sent (or cut)."""
        task = self.start_reply(ms, text, pace)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _item(self, resp: _Response, status: str, transcript: str | None) -> dict[str, Any]:
        content = [] if transcript is None else [{"type": "output_audio",
                                                  "transcript": transcript}]
        return {"id": resp.item_id, "type": "message", "role": "assistant", "status": status,
                "object": "realtime.item", "content": content}

    def _ids_of(self, resp: _Response) -> dict[str, Any]:
        return {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0,
                "content_index": 0}

    async def _reply(self, s: FakeSession, resp: _Response, ms: int, pace: float) -> None:
        out_fmt = s.state["session"]["audio"]["output"]["format"]["type"]
        enc, rate = _FORMATS[out_fmt]
        await self._event(s, "response.created", response=self._response(resp, "in_progress"))
        await self._event(s, "rate_limits.updated", rate_limits=[
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
            {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5}])
        await self._event(s, "response.output_item.added", response_id=resp.id, output_index=0,
                          item=self._item(resp, "in_progress", None))
        await self._event(s, "conversation.item.added", item=self._item(resp, "in_progress", None),
                          previous_item_id=s.state["last_item"])
        s.state["last_item"] = resp.item_id
        await self._event(s, "response.content_part.added", **self._ids_of(resp),
                          part={"type": "audio", "transcript": ""})
        s.state["items"][resp.item_id] = 0.0
        words = resp.text.split()
        n_chunks = max(1, -(-ms // self.chunk_ms))
        sent_samples = 0
        for i in range(n_chunks):
            chunk_ms = min(self.chunk_ms, ms - i * self.chunk_ms)
            pcm = tone(chunk_ms, rate, start_sample=sent_samples)
            sent_samples += len(pcm)
            audio = base64.b64encode(encode(pcm, enc)).decode()
            await self._event(s, "response.output_audio.delta", **self._ids_of(resp), delta=audio)
            resp.audio_ms += chunk_ms
            s.state["items"][resp.item_id] = resp.audio_ms
            if words and i * len(words) // n_chunks >= len(resp.spoken_words):
                word = words[len(resp.spoken_words)]
                resp.spoken_words.append(word)
                delta = word if len(resp.spoken_words) == 1 else f" {word}"
                await self._event(s, "response.output_audio_transcript.delta",
                                  **self._ids_of(resp), delta=delta)
            await asyncio.sleep(chunk_ms / 1000 * pace)
        await self._finish(s, resp, "completed", None)

    def _response(self, resp: _Response, status: str, reason: str | None = None,
                  output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": resp.id, "object": "realtime.response", "status": status,
            "output": output or [], "output_modalities": ["audio"],
            "conversation_id": "conv_fake", "metadata": resp.metadata,
        }
        if reason is not None:
            out["status_details"] = {"type": status, "reason": reason}
        return out

    async def _finish(self, s: FakeSession, resp: _Response, status: str,
                      reason: str | None) -> None:
        if resp.done:
            return
        resp.done = True
        spoken = " ".join(resp.spoken_words)
        await self._event(s, "response.output_audio.done", **self._ids_of(resp))
        await self._event(s, "response.output_audio_transcript.done", **self._ids_of(resp),
                          transcript=spoken)
        await self._event(s, "response.content_part.done", **self._ids_of(resp),
                          part={"type": "audio", "transcript": spoken})
        item = self._item(resp, "completed" if status == "completed" else "incomplete", spoken)
        await self._event(s, "response.output_item.done", response_id=resp.id, output_index=0,
                          item=item)
        await self._event(s, "conversation.item.done", item=item,
                          previous_item_id=None)
        await self._event(s, "response.done",
                          response=self._response(resp, status, reason, [item]))
        if s.state["response"] is resp:
            s.state["response"] = None

    async def _cancel(self, s: FakeSession, reason: str) -> None:
        resp: _Response | None = s.state["response"]
        if resp is None:
            return
        if resp.task is not None and resp.task is not asyncio.current_task():
            resp.task.cancel()
        await self._finish(s, resp, "cancelled", reason)

    # -- scripted failures -------------------------------------------------------------

    async def send_error(self, code: str = "conversation_already_has_active_response",
                         message: str = "Conversation already has an active response") -> None:
        """A recoverable ``error`` event; the session stays open."""
        await self._error(self.session, message, code=code)

    async def expire(self) -> None:
        """Max session length: ``error`` session_expired, then close 1001 with that reason."""
        await self._error(self.session, SESSION_EXPIRED, code="session_expired")
        await self.session.close(1001, SESSION_EXPIRED)


def _json(content: bytes) -> dict[str, Any]:
    import json

    try:
        out = json.loads(content or b"{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


@contextlib.asynccontextmanager
async def fake_openai_realtime(**kwargs: Any) -> AsyncIterator[FakeOpenAIRealtime]:
    """Run a :class:`FakeOpenAIRealtime` on loopback; ``url`` is its ``/v1`` base URL."""
    async with FakeOpenAIRealtime(**kwargs) as fake:
        yield fake

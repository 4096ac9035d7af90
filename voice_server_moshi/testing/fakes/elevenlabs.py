"""A fake ElevenLabs Agents conversation server: reference/vendor-protocols.md section B.

Audio formats belong to the fake "agent" (constructor arguments), announced in
``conversation_initiation_metadata`` as the real service does. Caller speech is detected by
energy: a tentative transcript at onset, an ``interruption`` if the agent was talking (later
audio of that turn carries the interrupted ``event_id`` and must be dropped by the client),
a final ``user_transcript`` at the end. Errors precede a close whose code the error carries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

from ._server import FakePeer, FakeSession
from ._signal import SpeechDetector, WireEncoding, decode, encode, tone

FORMATS = ("pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000",
           "ulaw_8000")


def _wire(fmt: str) -> tuple[WireEncoding, int]:
    kind, _, rate = fmt.partition("_")
    return ("mulaw" if kind == "ulaw" else "pcm16"), int(rate)


class FakeElevenLabs(FakePeer):
    """Scriptable fake of ``wss://api.elevenlabs.io/v1/convai/conversation``.

    Args:
        agent_id: the only agent it knows (others get error + close 1008).
        api_key: when set the agent is private: a socket needs a signature minted through
            :meth:`mock_rest` (``get-signed-url`` with ``xi-api-key``).
        input_format / output_format: the agent's audio formats.
        reply_ms: agent reply after each caller turn (0: none).
        ping_interval_s: how often it pings (every ping needs a pong).
        chunk_ms: audio per ``audio`` message; pace: 0 as fast as possible, 1 real time.
        stale_audio_after_interrupt: after an interruption, send one more chunk of the
            interrupted turn (the race the vendor SDKs guard against).
    """

    ws_path = "/v1/convai/conversation"
    vendor = "elevenlabs"

    def __init__(
        self,
        *,
        agent_id: str = "agent_fake",
        api_key: str | None = None,
        input_format: str = "ulaw_8000",
        output_format: str = "ulaw_8000",
        reply_ms: int = 0,
        reply_text: str = "hello from the fake agent",
        caller_transcript: str = "hello",
        ping_interval_s: float = 1.0,
        chunk_ms: int = 130,
        pace: float = 0.0,
        stale_audio_after_interrupt: bool = True,
    ) -> None:
        super().__init__(api_key=api_key)
        if input_format not in FORMATS or output_format not in FORMATS:
            raise ValueError(f"formats must be among {FORMATS}")
        self.agent_id = agent_id
        self.input_format = input_format
        self.output_format = output_format
        self.reply_ms = reply_ms
        self.reply_text = reply_text
        self.caller_transcript = caller_transcript
        self.ping_interval_s = ping_interval_s
        self.chunk_ms = chunk_ms
        self.pace = pace
        self.stale_audio_after_interrupt = stale_audio_after_interrupt
        self.signatures: set[str] = set()
        self._ids = itertools.count(1)

    def _authorized(self, request: Any, query: dict[str, str]) -> bool:
        return self.api_key is None or query.get("conversation_signature") in self.signatures

    # -- REST (respx) ------------------------------------------------------------------

    def mock_rest(self, router: Any) -> None:
        """Add ``GET /v1/convai/conversation/get-signed-url`` to a ``respx`` router."""
        import httpx

        def signed_url(request: httpx.Request) -> httpx.Response:
            if self.api_key is None or request.headers.get("xi-api-key") != self.api_key:
                return httpx.Response(401, json={"detail": {"status": "invalid_api_key",
                                                            "message": "Invalid API key"}})
            agent = request.url.params.get("agent_id")
            if agent != self.agent_id:
                return httpx.Response(404, json={"detail": {"status": "agent_not_found",
                                                            "message": "Agent not found"}})
            sig = secrets.token_hex(8)
            self.signatures.add(sig)
            return httpx.Response(200, json={"signed_url": (
                f"{self.ws_url}{self.ws_path}?agent_id={agent}&conversation_signature={sig}")})

        router.get(f"{self.http_url}/v1/convai/conversation/get-signed-url").mock(
            side_effect=signed_url)

    # -- protocol ----------------------------------------------------------------------

    async def _serve(self, s: FakeSession) -> None:
        st = s.state
        st.update(turn=0, speaking=None, interrupted=0, pings=[], pongs=[], reply_task=None)
        st["detector"] = SpeechDetector(_wire(self.input_format)[1])
        if s.query.get("agent_id") != self.agent_id:
            await self.fail("missing_fields" if "agent_id" not in s.query else "value_error",
                            code=1008, message="Invalid or missing agent_id", session=s)
            return
        # The initiation message is optional; the SDKs always send it first.
        first: dict[str, Any] | None = None
        with contextlib.suppress(TimeoutError):
            first = await asyncio.wait_for(self._receive(s), 1.0)
        override: dict[str, Any] = {}
        if first is not None and first.get("type") == "conversation_initiation_client_data":
            override = first.get("conversation_config_override") or {}
        await s.send({"type": "conversation_initiation_metadata",
                      "conversation_initiation_metadata_event": {
                          "conversation_id": f"conv_{secrets.token_hex(6)}",
                          "agent_output_audio_format": self.output_format,
                          "user_input_audio_format": self.input_format}})
        s.ready.set()
        pinger = self.spawn(self._ping_loop(s))
        welcome = (override.get("agent") or {}).get("first_message")
        if welcome:
            st["reply_task"] = self.spawn(self._reply(s, self.reply_ms or 500, welcome, None))
        try:
            if first is not None and first.get("type") != "conversation_initiation_client_data":
                await self._on_client(s, first)
            while (msg := await self._receive(s)) is not None:
                await self._on_client(s, msg)
        finally:
            pinger.cancel()

    async def _ping_loop(self, s: FakeSession) -> None:
        while not s.closed.is_set():
            await asyncio.sleep(self.ping_interval_s)
            eid = next(self._ids)
            s.state["pings"].append(eid)
            await s.send({"type": "ping", "ping_event": {"event_id": eid, "ping_ms": None}})

    async def _on_client(self, s: FakeSession, msg: dict[str, Any]) -> None:
        if "user_audio_chunk" in msg:
            await self._on_audio(s, msg["user_audio_chunk"])
        elif msg.get("type") == "pong":
            s.state["pongs"].append(msg.get("event_id"))
        elif msg.get("type") in ("user_activity", "contextual_update", "user_message",
                                 "conversation_initiation_client_data", "feedback"):
            pass
        else:
            await self.fail("invalid_message", code=1008, session=s,
                            message=f"Unknown message: {str(msg)[:80]}")

    async def _on_audio(self, s: FakeSession, b64: Any) -> None:
        try:
            data = base64.b64decode(str(b64), validate=True)
        except (binascii.Error, ValueError):
            await self.fail("invalid_message", code=1008, session=s,
                            message="user_audio_chunk is not base64")
            return
        enc, _ = _wire(self.input_format)
        for what, _t in s.state["detector"].feed(decode(data, enc)):
            if what == "start":
                await self.caller_started(s)
            else:
                await self.caller_stopped(s)

    async def caller_started(self, session: FakeSession | None = None) -> None:
        s = session or self.session
        speaking = s.state["speaking"]
        if speaking is not None:
            s.state["interrupted"] = speaking
            task = s.state["reply_task"]
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            s.state["speaking"] = None
            await s.send({"type": "interruption", "interruption_event": {"event_id": speaking}})
            if self.stale_audio_after_interrupt:
                await self._audio(s, speaking, self.chunk_ms)
            await s.send({"type": "agent_response_correction",
                          "agent_response_correction_event": {
                              "original_agent_response": self.reply_text,
                              "corrected_agent_response": self.reply_text.split()[0] + "...",
                              "event_id": speaking}})
        await s.send({"type": "tentative_user_transcript",
                      "tentative_user_transcription_event": {
                          "user_transcript": self.caller_transcript.split()[0],
                          "event_id": next(self._ids)}})

    async def caller_stopped(self, session: FakeSession | None = None) -> None:
        s = session or self.session
        await s.send({"type": "user_transcript", "user_transcription_event": {
            "user_transcript": self.caller_transcript, "event_id": next(self._ids)}})
        if self.reply_ms:
            s.state["reply_task"] = self.spawn(self._reply(s, self.reply_ms, None, None))

    async def _audio(self, s: FakeSession, event_id: int, ms: int, start: int = 0) -> int:
        enc, rate = _wire(self.output_format)
        pcm = tone(ms, rate, start_sample=start)
        await s.send({"type": "audio", "audio_event": {
            "audio_base_64": base64.b64encode(encode(pcm, enc)).decode(),
            "event_id": event_id}})
        return len(pcm)

    async def _reply(self, s: FakeSession, ms: int, text: str | None, pace: float | None) -> None:
        eid = next(self._ids)
        s.state["turn"] = eid
        s.state["speaking"] = eid
        pace = self.pace if pace is None else pace
        await s.send({"type": "agent_response", "agent_response_event": {
            "agent_response": text or self.reply_text, "event_id": eid}})
        sent, pos = 0, 0
        while sent < ms and s.state["speaking"] == eid:
            step = min(self.chunk_ms, ms - sent)
            pos += await self._audio(s, eid, step, pos)
            sent += step
            await asyncio.sleep(step / 1000 * pace)
        if s.state["speaking"] == eid:
            s.state["speaking"] = None

    # -- scripting ---------------------------------------------------------------------

    def start_reply(self, ms: int, text: str | None = None,
                    pace: float | None = None) -> asyncio.Task[None]:
        s = self.session
        task = self.spawn(self._reply(s, ms, text, pace))
        s.state["reply_task"] = task
        return task

    async def speak(self, ms: int, text: str | None = None, pace: float | None = None) -> None:
        """The agent says ``ms`` of audio; returns when it was sent (or interrupted)."""
        with contextlib.suppress(asyncio.CancelledError):
            await self.start_reply(ms, text, pace)

    async def send_error(self, error_type: str = "llm_error", *, code: int = 1002,
                         message: str = "LLM request failed") -> None:
        """An ``error`` message alone (the real service closes right after it: see fail)."""
        await self._send_error(self.session, error_type, code, message)

    async def _send_error(self, s: FakeSession, error_type: str, code: int, message: str) -> None:
        await s.send({"type": "error", "error_event": {
            "code": code, "message": message, "error_type": error_type,
            "reason": message, "debug_message": None, "details": None}})

    async def fail(self, error_type: str = "llm_error", *, code: int = 1002,
                   message: str = "LLM request failed", session: FakeSession | None = None) -> None:
        """What the service does on an error: ``error`` with the code, then close with it."""
        s = session or self.session
        await self._send_error(s, error_type, code, message)
        await s.close(code, error_type)

    async def end_call(self) -> None:
        """The agent ends the conversation: close 1000."""
        await self.session.close(1000, "agent ended the conversation")


@contextlib.asynccontextmanager
async def fake_elevenlabs(**kwargs: Any) -> AsyncIterator[FakeElevenLabs]:
    """Run a :class:`FakeElevenLabs` on loopback; ``url`` is its REST/WS base URL."""
    async with FakeElevenLabs(**kwargs) as fake:
        yield fake

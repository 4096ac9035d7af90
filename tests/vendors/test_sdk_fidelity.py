"""The fakes speak each vendor's protocol as the vendor's own SDK understands it.

* OpenAI: the ``openai`` SDK's realtime client connects to the fake, and every event the
  fake sent validates against the SDK's ``RealtimeServerEvent`` union (pydantic).
* ElevenLabs: the SDK's ``AsyncConversation`` holds a conversation with the fake (its
  handler reads the fields it needs and ends the session on any it cannot).
* Phonic: every message the fake sent validates against the SDK's payload models.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pydantic
import pytest

from voice_server_moshi.testing import fake_elevenlabs, fake_openai_realtime, fake_phonic
from voice_server_moshi.testing.fakes._signal import encode, tone

from .helpers import Collector

# The vendor SDKs still import websockets' legacy API; their warnings are not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _speech(ms: int, rate: int, encoding: str, loud: bool) -> bytes:
    pcm = tone(ms, rate, freq=300, amplitude=10000) if loud else np.zeros(
        rate * ms // 1000, dtype=np.int16)
    return encode(pcm, encoding)  # type: ignore[arg-type]


async def test_openai_sdk_parses_every_fake_event() -> None:
    openai = pytest.importorskip("openai")
    from openai.types.realtime import RealtimeServerEvent

    adapter = pydantic.TypeAdapter(RealtimeServerEvent)
    async with fake_openai_realtime(reply_ms=300) as fake:
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test")
        seen: list[str] = []
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session={
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcmu"},
                                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                                    "turn_detection": {"type": "server_vad",
                                                       "silence_duration_ms": 200}},
                          "output": {"format": {"type": "audio/pcmu"}}},
            })
            for loud, ms in ((True, 400), (False, 400)):
                for _ in range(ms // 20):
                    audio = base64.b64encode(_speech(20, 8000, "mulaw", loud)).decode()
                    await conn.input_audio_buffer.append(audio=audio)
            async with asyncio.timeout(20):
                async for event in conn:
                    seen.append(event.type)
                    if event.type == "response.done":
                        break
            await conn.send({"type": "response.cancel"})  # none active after the reply
            await conn.conversation.item.truncate(item_id=fake.session.state["last_item"],
                                                  content_index=0, audio_end_ms=100)
            async with asyncio.timeout(20):
                async for event in conn:
                    seen.append(event.type)
                    if event.type in ("conversation.item.truncated",):
                        break
        assert seen[0] == "session.created"
        for kind in ("session.updated", "input_audio_buffer.speech_started",
                     "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                     "conversation.item.input_audio_transcription.completed",
                     "response.output_audio.delta", "response.output_audio_transcript.done",
                     "response.done", "conversation.item.truncated", "rate_limits.updated"):
            assert kind in seen, f"the SDK never saw {kind}: {seen}"
        sent = [m for s in fake.sessions for m in s.sent]
        for msg in sent:
            adapter.validate_python(msg)  # raises on any field the SDK types reject
        errors = [m for m in sent if m["type"] == "error"]
        # Only the scripted one (response.cancel with no active response).
        assert [e["error"]["code"] for e in errors] == ["response_cancel_not_active"]


async def test_openai_sdk_types_accept_scripted_failures() -> None:
    pytest.importorskip("openai")
    from openai.types.realtime import RealtimeServerEvent

    adapter = pydantic.TypeAdapter(RealtimeServerEvent)
    async with fake_openai_realtime() as fake:
        import websockets

        async with websockets.connect(f"{fake.ws_url}/v1/realtime?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer sk-test"}
                                      ) as ws:
            await ws.recv()
            await ws.send('{"type": "nonsense"}')
            await ws.recv()
            await fake.send_error()
            await fake.expire()
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 1001
        for msg in fake.session.sent:
            adapter.validate_python(msg)


class _Capture:
    """An ElevenLabs ``AsyncAudioInterface`` that plays a scripted caller and keeps output."""

    def __init__(self) -> None:
        self.output_bytes = 0
        self.interrupts = 0
        self.progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, input_callback: Callable[[bytes], Awaitable[None]]) -> None:
        async def caller() -> None:
            for loud, ms in ((False, 200), (True, 400), (False, 600)):
                for _ in range(ms // 20):
                    await input_callback(_speech(20, 8000, "mulaw", loud))
                    await asyncio.sleep(0.005)

        self._task = asyncio.get_running_loop().create_task(caller())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def output(self, audio: bytes) -> None:
        self.output_bytes += len(audio)
        self.progress.set()

    async def interrupt(self) -> None:
        self.interrupts += 1


async def test_elevenlabs_sdk_conversation_with_the_fake() -> None:
    el = pytest.importorskip("elevenlabs")
    from elevenlabs.conversational_ai.conversation import (
        AsyncAudioInterface,
        AsyncConversation,
    )

    AsyncAudioInterface.register(_Capture)
    agent_texts: list[str] = []
    user_texts: list[str] = []
    ended: list[Any] = []

    async def on_agent(text: str) -> None:
        agent_texts.append(text)

    async def on_user(text: str) -> None:
        user_texts.append(text)

    async def on_disconnect(details: Any) -> None:
        ended.append(details)

    async with fake_elevenlabs(reply_ms=300, ping_interval_s=0.1) as fake:
        client = el.AsyncElevenLabs(base_url=fake.url, api_key="unused")
        capture = _Capture()
        conv = AsyncConversation(
            client, fake.agent_id, requires_auth=False, audio_interface=capture,  # type: ignore[arg-type]
            callback_agent_response=on_agent, callback_user_transcript=on_user,
            callback_disconnect=on_disconnect)
        await conv.start_session()
        try:
            async with asyncio.timeout(20):
                while not (agent_texts and capture.output_bytes >= 8 * 300):
                    capture.progress.clear()
                    await capture.progress.wait()
            assert not ended, f"the SDK ended the session on a fake message: {ended}"
        finally:
            await conv.end_session()
        s = fake.session
        assert s.received[0]["type"] == "conversation_initiation_client_data"
        assert user_texts == [fake.caller_transcript]
        assert agent_texts == [fake.reply_text]
        assert s.state["pongs"], "the SDK answered no ping"
        assert set(s.state["pongs"]) <= set(s.state["pings"])


async def test_phonic_sdk_models_validate_every_fake_message() -> None:
    pytest.importorskip("phonic")
    from phonic.conversations import socket_client

    union = socket_client.ConversationsSocketClientResponse
    by_type = {}
    for cls in union.__args__:
        by_type[cls.model_fields["type"].default] = cls
    from voice_server_moshi.vendors.phonic import PhonicAdapter
    from voice_server_moshi.vendors.settings import PhonicSettings


    async with fake_phonic(reply_ms=200) as fake:
        adapter = PhonicAdapter(PhonicSettings(api_key="ph_test", base_url=fake.url,
                                               stream_ahead_of_real_time=True))
        async with Collector(adapter) as call:
            await call.caller(200, loud=False)
            await call.caller(400, loud=True)
            await call.caller(500, loud=False)
            await fake.speak(300)
            fake.start_speaking(2000, paced=True)
            await asyncio.sleep(0.2)
            await call.caller(300, loud=True)
            await fake.send_error()
            await fake.send_warning()
            await call.caller(300, loud=False)
        sent = fake.session.sent
        kinds = {m["type"] for m in sent}
        for kind in ("conversation_created", "ready_to_start_conversation", "audio_chunk",
                     "assistant_started_speaking", "assistant_finished_speaking",
                     "user_started_speaking", "user_finished_speaking", "input_text",
                     "interrupted_response", "error", "warning"):
            assert kind in kinds, f"the fake never sent {kind}"
        for msg in sent:
            model = by_type[msg["type"]]
            model.model_validate(msg, strict=False)
            # UncheckedBaseModel never raises: also check no field it declares is missing.
            required = {k for k, f in model.model_fields.items() if f.is_required()}
            assert required <= set(msg), f"{msg['type']} lacks {required - set(msg)}"


async def test_phonic_sdk_client_talks_and_resumes_with_the_fake() -> None:
    phonic = pytest.importorskip("phonic")
    from phonic.environment import PhonicEnvironment
    from phonic.types import AudioChunkPayload, ConfigPayload

    async with fake_phonic(reply_ms=200) as fake:
        client = phonic.AsyncPhonic(
            api_key="ph_test",
            environment=PhonicEnvironment(base=f"{fake.http_url}/v1", production=fake.url),
            reconnect_conversation_on_abnormal_disconnect=True,
        )
        kinds: list[str] = []
        async with client.conversations.connect() as socket:
            await socket.send_config(ConfigPayload(input_format="mulaw_8000",
                                                   output_format="mulaw_8000"))
            async with asyncio.timeout(20):
                while "ready_to_start_conversation" not in kinds:
                    kinds.append((await socket.recv()).type)
                for loud, ms in ((True, 400), (False, 500)):
                    for _ in range(ms // 20):
                        audio = base64.b64encode(_speech(20, 8000, "mulaw", loud)).decode()
                        await socket.send_audio_chunk(AudioChunkPayload(audio=audio))
                while "assistant_finished_speaking" not in kinds:
                    kinds.append((await socket.recv()).type)
                # A service restart: the SDK resumes with reconnect_conv_id by itself, the
                # next time it reads (recv reconnects).
                n = len(kinds)
                await fake.restart(1012, "restarting")
                pending = asyncio.get_running_loop().create_task(socket.recv())
                await fake.wait_session(count=2, timeout_s=15)
                fake.start_speaking(100)
                kinds.append(_kind(await pending))
                while "assistant_finished_speaking" not in kinds[n:]:
                    kinds.append(_kind(await socket.recv()))
        assert fake.sessions[1].query["reconnect_conv_id"] == socket.conversation_id
        for kind in ("conversation_created", "user_started_speaking", "user_finished_speaking",
                     "input_text", "assistant_started_speaking", "audio_chunk"):
            assert kind in kinds, f"the SDK never parsed {kind}: {sorted(set(kinds))}"


def _kind(msg: Any) -> str:
    """The type of a message the Phonic SDK parsed (a model, or a dict for types its union
    lacks, such as conversation_reconnected)."""
    return str(msg["type"] if isinstance(msg, dict) else msg.type)

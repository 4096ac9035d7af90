"""The OpenAI Realtime adapter against the fake OpenAI server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import respx
import structlog
from websockets.asyncio.server import ServerConnection, serve

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.errors import ConnectError, ConnectTimeoutError
from voice_server_moshi.events import AudioChunk, Error, Interruption, Transcript
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.registry import load_registry
from voice_server_moshi.settings import parse_settings, redacted
from voice_server_moshi.testing import FakeOpenAIRealtime, fake_openai_realtime
from voice_server_moshi.vendors.openai_realtime import OpenAIRealtimeAdapter
from voice_server_moshi.vendors.settings import OpenAIRealtimeSettings

from .helpers import Collector


def _adapter(fake: FakeOpenAIRealtime, **kw: object) -> OpenAIRealtimeAdapter:
    settings = OpenAIRealtimeSettings(api_key="sk-test", base_url=fake.url,
                                      vad_silence_duration_ms=200, **kw)  # type: ignore[arg-type]
    return OpenAIRealtimeAdapter(settings)


@pytest.mark.parametrize(
    ("encoding", "wire"),
    [("mulaw", {"type": "audio/pcmu"}), ("alaw", {"type": "audio/pcma"}),
     ("pcm16", {"type": "audio/pcm", "rate": 24000})],
)
async def test_session_update_matches_the_call(encoding: str, wire: dict[str, object]) -> None:
    async with fake_openai_realtime() as fake:
        async with Collector(_adapter(fake), AudioFormat(encoding)):  # type: ignore[arg-type]
            pass
        upd = fake.session.of_type("session.update")[0]["session"]
    assert upd["type"] == "realtime"
    assert upd["audio"]["input"]["format"] == wire
    assert upd["audio"]["output"]["format"] == wire
    td = upd["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad" and td["interrupt_response"] and td["create_response"]
    assert td["silence_duration_ms"] == 200
    assert upd["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}


async def test_no_transcription_model_means_no_caller_transcripts() -> None:
    async with fake_openai_realtime() as fake:
        adapter = _adapter(fake, input_transcription_model=None)
        assert not adapter.capabilities.caller_transcript
        async with Collector(adapter) as call:
            await call.caller(400, loud=True)
            await call.caller(400, loud=False)
            await call.wait_name("speech-ended")
        upd = fake.session.of_type("session.update")[0]["session"]
    assert "transcription" not in upd["audio"]["input"]
    assert not [e for e in call.events if isinstance(e, Transcript) and e.role == "caller"]


async def test_pcm16_call_gets_resampled_agent_audio() -> None:
    async with fake_openai_realtime() as fake:
        fmt = AudioFormat("pcm16", 8000, 20)
        async with Collector(_adapter(fake), fmt) as call:
            await fake.speak(600)
            await call.wait_for(lambda _e: len(call.audio()) >= 30)
    chunks = call.audio()
    assert all(len(c.audio) == 320 for c in chunks)
    pcm = np.frombuffer(b"".join(c.audio for c in chunks[2:-2]), "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak_hz = np.argmax(spectrum) * 8000 / len(pcm)
    assert abs(peak_hz - 440) < 10, f"the 440 Hz agent tone came out at {peak_hz:.0f} Hz"


async def test_barge_in_truncates_to_what_was_played() -> None:
    async with fake_openai_realtime(pace=1.0) as fake:
        adapter = _adapter(fake)
        async with Collector(adapter) as call:
            fake.start_reply(4000)
            await call.wait_for(lambda _e: len(call.audio()) >= 15)
            # The host's jitter buffer lags: only 120 ms reached the caller's ear.
            adapter.report_played_ms(120)
            await call.caller(300, loud=True)
            await call.wait_name("interruption")
            msg = await fake.wait_received(lambda m: m["type"] == "conversation.item.truncate")
            await asyncio.sleep(0.3)  # let the fake answer
        assert msg["audio_end_ms"] == 120
        assert msg["content_index"] == 0
        deltas = [m for m in fake.session.sent if m["type"] == "response.output_audio.delta"]
        assert msg["item_id"] == deltas[0]["item_id"]
        truncated = [m for m in fake.session.sent if m["type"] == "conversation.item.truncated"]
        assert truncated and truncated[0]["audio_end_ms"] == 120
        cut = next(i for i, e in enumerate(call.events) if isinstance(e, Interruption))
        assert not [e for e in call.events[cut:] if isinstance(e, AudioChunk)]


async def test_barge_in_by_default_truncates_at_what_was_emitted() -> None:
    async with fake_openai_realtime(pace=1.0) as fake:
        adapter = _adapter(fake)
        async with Collector(adapter) as call:
            fake.start_reply(4000)
            await call.wait_for(lambda _e: len(call.audio()) >= 10)
            await call.caller(300, loud=True)
            await call.wait_name("interruption")
            msg = await fake.wait_received(lambda m: m["type"] == "conversation.item.truncate")
            emitted = adapter.emitted_ms
        assert 0 < msg["audio_end_ms"] <= emitted
        assert not [m for m in fake.session.sent if m["type"] == "error"]


async def test_speech_after_a_finished_reply_is_no_interruption() -> None:
    async with fake_openai_realtime() as fake:
        async with Collector(_adapter(fake)) as call:
            await fake.speak(300)
            await call.wait_for(lambda _e: len(call.audio()) >= 15)
            await call.caller(300, loud=True)
            await call.wait_name("speech-started")
            await call.caller(400, loud=False)
        assert "interruption" not in call.names()
        assert not fake.session.of_type("conversation.item.truncate")


async def test_report_played_ms_rejects_negative() -> None:
    adapter = OpenAIRealtimeAdapter(OpenAIRealtimeSettings(api_key="k"))
    with pytest.raises(ValueError, match=">= 0"):
        adapter.report_played_ms(-1)


async def test_peer_error_is_not_fatal_and_garbage_is_ignored() -> None:
    async with fake_openai_realtime() as fake:
        async with Collector(_adapter(fake)) as call:
            await fake.session.ws.send("this is not json")
            await fake.send_error("response_cancel_not_active", "no active response")
            err = await call.wait_name("error")
            await fake.speak(100)
            await call.wait_for(lambda _e: len(call.audio()) >= 5)
        assert isinstance(err, Error) and not err.fatal
        assert err.code == "response_cancel_not_active"
        assert call.adapter.counters["peer_messages_unparsed"] == 1
        assert call.events[-1].name == "disconnected"


async def test_client_secret_is_minted_and_the_key_never_logged() -> None:
    async with fake_openai_realtime() as fake:
        with respx.mock(assert_all_called=True) as router, structlog.testing.capture_logs() as logs:
            fake.mock_rest(router)
            async with Collector(_adapter(fake, use_client_secret=True)):
                pass
            body = router.calls[0].request.content
        auth = fake.session.headers["Authorization"]
        assert auth.startswith("Bearer ek_") and auth.removeprefix("Bearer ") in fake.client_secrets
        assert "sk-test" not in repr(logs)
        assert b'"expires_after"' in body and b'"type":"realtime"' in body.replace(b" ", b"")


async def test_refused_client_secret_is_a_connect_error() -> None:
    async with fake_openai_realtime(api_key="sk-right") as fake:
        with respx.mock() as router:
            fake.mock_rest(router)
            adapter = OpenAIRealtimeAdapter(OpenAIRealtimeSettings(
                api_key="sk-wrong", base_url=fake.url, use_client_secret=True))
            with pytest.raises(ConnectError, match="HTTP 401") as info:
                await adapter.connect(_config())
    assert "sk-wrong" not in str(info.value)


def _config() -> VoiceModelConfig:
    return VoiceModelConfig()


async def test_silent_server_is_a_connect_timeout() -> None:
    done = asyncio.Event()

    async def silent(ws: ServerConnection) -> None:
        await done.wait()  # accepts the socket, never says session.created

    async with serve(silent, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        adapter = OpenAIRealtimeAdapter(OpenAIRealtimeSettings(
            api_key="k", base_url=f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.5))
        with pytest.raises(ConnectTimeoutError):
            await adapter.connect(_config())
        assert [e async for e in adapter.events()] == []
        done.set()


def test_settings_parse_redact_and_register() -> None:
    s = parse_settings(OpenAIRealtimeSettings, {"api_key": "sk-secret", "wire_format": "g711"},
                       section="openai-realtime")
    assert "sk-secret" not in repr(s)
    assert redacted(s)["api_key"] == "<redacted>"
    with pytest.raises(ValueError, match="base_url"):
        OpenAIRealtimeSettings(base_url="ftp://x")
    reg = load_registry(entry_points=False, plugins=[__import__(
        "voice_server_moshi.plugin", fromlist=["plugin"])])
    adapter = reg.create_adapter("openai-realtime", {"api_key": "k"})
    assert isinstance(adapter, OpenAIRealtimeAdapter)


async def test_scripted_caller_turn_on_the_fake() -> None:
    async with fake_openai_realtime() as fake, Collector(_adapter(fake)) as call:
        await call.caller(200, loud=False)
        await fake.caller_started()
        await fake.caller_stopped()
        await call.wait_name("speech-ended")
    started = next(e for e in call.events if e.name == "speech-started")
    assert started.t_ms == 0  # 200 ms received, minus the 300 ms prefix padding, floored

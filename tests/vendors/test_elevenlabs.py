"""The ElevenLabs Agents adapter against the fake ElevenLabs server."""

from __future__ import annotations

import asyncio

import pytest
import respx

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.errors import ConnectError, SettingsError
from voice_server_moshi.events import AudioChunk, Interruption, SpeechStarted, Transcript
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.settings import parse_settings
from voice_server_moshi.testing import FakeElevenLabs, fake_elevenlabs
from voice_server_moshi.vendors.elevenlabs import ElevenLabsAdapter, parse_format
from voice_server_moshi.vendors.settings import ElevenLabsSettings

from .helpers import Collector


def _adapter(fake: FakeElevenLabs, **kw: object) -> ElevenLabsAdapter:
    return ElevenLabsAdapter(ElevenLabsSettings(agent_id=fake.agent_id, base_url=fake.url,
                                                **kw))  # type: ignore[arg-type]


async def test_public_agent_initiation_carries_overrides_and_metadata() -> None:
    async with fake_elevenlabs() as fake:
        adapter = _adapter(fake, first_message="Hi!", prompt="Be brief.", user_id="u1")
        async with Collector(adapter, metadata={"caller": "+331234"}) as call:
            await call.wait_name("connected")
        first = fake.session.received[0]
    assert fake.session.query["agent_id"] == fake.agent_id
    assert first == {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"agent": {"first_message": "Hi!",
                                                   "prompt": {"prompt": "Be brief."}}},
        "user_id": "u1",
        "dynamic_variables": {"caller": "+331234"},
    }


async def test_private_agent_uses_a_signed_url() -> None:
    async with fake_elevenlabs(api_key="xi-key") as fake:
        with respx.mock(assert_all_called=True) as router:
            fake.mock_rest(router)
            async with Collector(_adapter(fake, api_key="xi-key")):
                pass
            assert router.calls[0].request.headers["xi-api-key"] == "xi-key"
        assert fake.session.query["conversation_signature"] in fake.signatures


async def test_private_agent_with_a_wrong_key_is_refused_without_leaking_it() -> None:
    async with fake_elevenlabs(api_key="xi-key") as fake:
        with respx.mock() as router:
            fake.mock_rest(router)
            adapter = _adapter(fake, api_key="xi-wrong")
            with pytest.raises(ConnectError, match="401") as info:
                await adapter.connect(VoiceModelConfig())
    assert "xi-wrong" not in str(info.value)
    assert fake.sessions == []


async def test_every_ping_gets_its_pong() -> None:
    async with fake_elevenlabs(ping_interval_s=0.05) as fake:
        async with Collector(_adapter(fake)) as call:
            await call.caller(600, loud=False)
        st = fake.session.state
    assert len(st["pings"]) >= 3
    assert set(st["pings"][:-1]) <= set(st["pongs"])


async def test_interrupted_turn_audio_is_dropped() -> None:
    async with fake_elevenlabs(pace=1.0, stale_audio_after_interrupt=True) as fake:
        adapter = _adapter(fake)
        async with Collector(adapter) as call:
            fake.start_reply(4000)
            await call.wait_for(lambda _e: len(call.audio()) >= 6)
            await call.caller(300, loud=True)
            await call.wait_name("interruption")
            await call.caller(600, loud=False)
            await call.wait_name("speech-ended")
        assert adapter.counters["agent_audio_after_interrupt"] >= 1
        ev = call.events
        cut = next(i for i, e in enumerate(ev) if isinstance(e, Interruption))
        assert not [e for e in ev[cut:] if isinstance(e, AudioChunk)]
        # Derived caller speech: started with the interruption, before it.
        assert isinstance(ev[cut - 1], SpeechStarted) and ev[cut - 1].source == "provider"
        corrected = [e for e in ev[cut:] if isinstance(e, Transcript) and e.role == "agent"]
        assert corrected and corrected[0].text.endswith("...")


async def test_partial_frame_is_flushed_when_the_agent_pauses() -> None:
    async with fake_elevenlabs(chunk_ms=130) as fake, Collector(_adapter(fake)) as call:
        await fake.speak(130)  # 6.5 frames of 20 ms
        await call.wait_for(lambda _e: len(call.audio()) >= 7, timeout_s=5)
    assert len(call.audio()) == 7
    assert call.audio()[-1].audio[-1] == 0xFF  # padded with µ-law silence


@pytest.mark.parametrize("out_fmt", ["pcm_16000", "pcm_24000", "ulaw_8000"])
@pytest.mark.parametrize("call_enc", ["mulaw", "pcm16"])
async def test_agent_formats_convert_to_the_call(out_fmt: str, call_enc: str) -> None:
    async with fake_elevenlabs(input_format="pcm_16000", output_format=out_fmt) as fake:
        fmt = AudioFormat(call_enc, 8000, 20)  # type: ignore[arg-type]
        async with Collector(_adapter(fake), fmt) as call:
            await call.caller(200, loud=False)
            await fake.speak(400)
            await call.wait_for(lambda _e: len(call.audio()) >= 20)
        sent = fake.session.received
    assert {len(c.audio) for c in call.audio()} == {fmt.bytes_per_frame}
    audio_in = [m for m in sent if "user_audio_chunk" in m]
    # 20 ms of caller audio as pcm_16000: 320 samples, 640 bytes -> 856 base64 chars.
    assert audio_in and {len(m["user_audio_chunk"]) for m in audio_in} == {856}


async def test_unknown_agent_format_is_a_connect_error() -> None:
    async with fake_elevenlabs() as fake:
        fake.output_format = "mp3_44100_128"
        with pytest.raises(ConnectError, match="mp3_44100_128"):
            await _adapter(fake).connect(VoiceModelConfig())


async def test_speech_events_off() -> None:
    async with fake_elevenlabs() as fake:
        adapter = _adapter(fake, speech_events="off")
        assert not adapter.capabilities.server_vad
        async with Collector(adapter) as call:
            await call.caller(400, loud=True)
            await call.caller(600, loud=False)
            await call.wait_for(lambda e: isinstance(e, Transcript) and e.final)
    assert "speech-started" not in call.names() and "speech-ended" not in call.names()


async def test_error_then_close_is_fatal_with_the_close_code() -> None:
    async with fake_elevenlabs() as fake, Collector(_adapter(fake)) as call:
        await fake.fail("transport_receive_timeout", code=1002, message="no user input")
        await call.ended()
    assert call.names() == ["connected", "error", "error", "disconnected"]
    assert call.events[1].code == "transport_receive_timeout"  # type: ignore[union-attr]
    assert call.events[2].fatal and "no user input" in call.events[2].message  # type: ignore[union-attr]
    assert call.events[3].close_code == 1002  # type: ignore[union-attr]


async def test_agent_rate_the_resampler_lacks_is_a_clear_connect_error() -> None:
    async with fake_elevenlabs(output_format="pcm_22050") as fake:
        adapter = _adapter(fake)
        with pytest.raises(ConnectError, match="22050"):
            await adapter.connect(VoiceModelConfig())
        await asyncio.wait_for(fake.session.closed.wait(), 5)
    assert [e async for e in adapter.events()] == []


def test_parse_format() -> None:
    assert parse_format("ulaw_8000").encoding == "mulaw"
    assert parse_format("pcm_22050").sample_rate == 22050
    with pytest.raises(ValueError):
        parse_format("ulaw_16000")


def test_settings_need_an_agent() -> None:
    with pytest.raises(SettingsError, match="agent_id: required"):
        parse_settings(ElevenLabsSettings, {}, section="elevenlabs")
    with pytest.raises(SettingsError, match="agent_id is required"):
        parse_settings(ElevenLabsSettings, {"agent_id": ""}, section="elevenlabs")


async def test_two_calls_are_independent() -> None:
    async with fake_elevenlabs() as fake:
        a, b = _adapter(fake), _adapter(fake)
        async with Collector(a) as ca, Collector(b) as cb:
            await fake.sessions[0].close(1011, "crash")
            await ca.ended()
            await fake.wait_session(count=2)
            await fake.speak(200)  # the latest session: b's
            await cb.wait_for(lambda _e: len(cb.audio()) >= 10)
            await asyncio.sleep(0.1)
            assert b.state == "connected"
        assert ca.events[-1].close_code == 1011  # type: ignore[union-attr]

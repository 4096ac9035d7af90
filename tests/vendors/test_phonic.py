"""The Phonic STS adapter against the fake Phonic server."""

from __future__ import annotations

import asyncio
import base64

import pytest

from voice_server_moshi.events import Error, Interruption, Transcript
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.testing import FakePhonic, fake_phonic
from voice_server_moshi.vendors._ws import CloseInfo
from voice_server_moshi.vendors.phonic import PhonicAdapter, is_resumable, wire_format_for
from voice_server_moshi.vendors.settings import PhonicSettings

from .helpers import Collector, frame


def _adapter(fake: FakePhonic, **kw: object) -> PhonicAdapter:
    kw.setdefault("stream_ahead_of_real_time", True)
    return PhonicAdapter(PhonicSettings(api_key="ph_test", base_url=fake.url,
                                        **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("enc", "rate", "expected"),
    [("mulaw", 8000, "mulaw_8000"), ("alaw", 8000, "pcm_8000"), ("pcm16", 8000, "pcm_8000"),
     ("pcm16", 16000, "pcm_16000"), ("pcm16", 48000, "pcm_24000")],
)
def test_wire_format_for(enc: str, rate: int, expected: str) -> None:
    assert wire_format_for(AudioFormat(enc, rate), "auto")[1] == expected  # type: ignore[arg-type]


async def test_config_then_audio_in_chunks_of_at_most_40_ms() -> None:
    async with fake_phonic() as fake:
        adapter = _adapter(fake, agent="support", voice_id="sabrina", welcome_message=None)
        async with Collector(adapter) as call:
            await adapter.send_audio(frame(call.fmt, False, ms=100))  # one 100 ms chunk
            await fake.wait_received(lambda m: m.get("type") == "audio_chunk")
            await asyncio.sleep(0.2)
        received = fake.session.received
    config = received[0]
    assert config["type"] == "config"
    assert config["input_format"] == config["output_format"] == "mulaw_8000"
    assert config["agent"] == "support" and config["voice_id"] == "sabrina"
    assert "welcome_message" not in config
    chunks = [base64.b64decode(m["audio"]) for m in received if m["type"] == "audio_chunk"]
    assert [len(c) for c in chunks] == [160] * 5
    assert not [m for m in fake.session.sent if m["type"] == "error"]


async def test_idle_audio_is_not_emitted_by_default() -> None:
    async with fake_phonic() as fake:
        async with Collector(_adapter(fake)) as quiet:
            await asyncio.sleep(0.4)
        async with Collector(_adapter(fake, emit_idle_audio=True)) as loud:
            await loud.wait_for(lambda _e: len(loud.audio()) >= 5)
    assert quiet.audio() == []
    assert {c.audio for c in loud.audio()} == {b"\xff" * 160}


async def test_agent_turn_and_interruption() -> None:
    async with fake_phonic() as fake:
        async with Collector(_adapter(fake)) as call:
            await fake.speak(300)
            await call.wait_for(lambda e: isinstance(e, Transcript) and e.final)
            fake.start_speaking(3000, paced=True)
            await call.wait_for(lambda _e: len(call.audio()) >= 20)
            await call.caller(300, loud=True)
            await call.wait_name("interruption")
            await call.caller(400, loud=False)
            await call.wait_name("speech-ended")
        ev = call.events
        cut = next(i for i, e in enumerate(ev) if isinstance(e, Interruption))
        spoken = [e for e in ev[cut:] if isinstance(e, Transcript) and e.role == "agent"]
        assert spoken and spoken[0].final and spoken[0].text
        assert not [e for e in ev[cut:] if e.name == "audio-chunk"]
        finals = [e.text for e in ev[:cut] if isinstance(e, Transcript) and e.final]
        assert finals == [fake.reply_text]


async def test_error_is_not_fatal_and_warning_is_no_event() -> None:
    async with fake_phonic() as fake:
        adapter = _adapter(fake)
        async with Collector(adapter) as call:
            await fake.send_warning()
            await fake.send_error("Tool failed", "tool_error")
            err = await call.wait_name("error")
        assert isinstance(err, Error) and not err.fatal and err.code == "tool_error"
        assert adapter.counters["peer_warnings"] == 1
        assert call.names() == ["connected", "error", "disconnected"]


@pytest.mark.parametrize(("code", "reason"), [(1012, "restarting"), (1001, "restarting")])
async def test_resumes_after_a_restart(code: int, reason: str) -> None:
    async with fake_phonic() as fake:
        adapter = _adapter(fake)
        async with Collector(adapter) as call:
            conv = fake.session.state["conv"].id
            await fake.restart(code, reason)
            second = await fake.wait_session(count=2, timeout_s=10)
            assert second.query["reconnect_conv_id"] == conv
            await asyncio.sleep(0.1)
            await call.caller(200, loud=False)
            await fake.wait_received(lambda m: m.get("type") == "audio_chunk")
            await fake.speak(200)
            await call.wait_for(lambda _e: len(call.audio()) >= 10)
        assert adapter.reconnects == 1
        errors = [e for e in call.events if isinstance(e, Error)]
        assert [(e.code, e.fatal) for e in errors] == [("peer_reconnecting", False)]
        assert not second.of_type("config"), "a resumed conversation is not configured again"


async def test_bare_going_away_is_final() -> None:
    async with fake_phonic() as fake:
        async with Collector(_adapter(fake)) as call:
            await fake.session.close(1001, "")
            await call.ended()
        assert len(fake.sessions) == 1
    assert call.names() == ["connected", "error", "disconnected"]
    assert call.events[-1].close_code == 1001  # type: ignore[union-attr]


async def test_resumption_refused_after_grace_is_fatal() -> None:
    async with fake_phonic(grace_s=0.0) as fake, Collector(_adapter(fake)) as call:
        await fake.vanish()
        await call.ended()
    assert call.names() == ["connected", "error", "error", "disconnected"]
    assert call.events[-1].close_code == 4800  # type: ignore[union-attr]


async def test_caller_audio_while_reconnecting_is_dropped_not_queued() -> None:
    async with fake_phonic() as fake:
        adapter = _adapter(fake)
        async with Collector(adapter) as call:
            await fake.restart()
            await call.wait_name("error")
            await call.caller(100, loud=False, pace=0.0)
            await fake.wait_session(count=2, timeout_s=10)
        assert adapter.counters["caller_ms_dropped_reconnecting"] == 100


async def test_no_reconnect_when_disabled() -> None:
    async with fake_phonic() as fake, Collector(_adapter(fake, reconnect=False)) as call:
        await fake.vanish()
        await call.ended()
    assert call.events[-1].close_code == 1006  # type: ignore[union-attr]
    assert call.events[-2].code == "peer_vanished"  # type: ignore[union-attr]


def test_is_resumable() -> None:
    assert is_resumable(CloseInfo(1006, ""))
    assert is_resumable(CloseInfo(1012, ""))
    assert is_resumable(CloseInfo(1001, "restarting"))
    assert not is_resumable(CloseInfo(1001, ""))
    assert not is_resumable(CloseInfo(4800, "session expired"))
    assert not is_resumable(CloseInfo(1000, ""))


async def test_assistant_ends_the_conversation() -> None:
    async with fake_phonic() as fake, Collector(_adapter(fake)) as call:
        await fake.end_conversation()
        await call.ended()
    assert call.names() == ["connected", "disconnected"]
    assert call.events[-1].close_code == 4600  # type: ignore[union-attr]

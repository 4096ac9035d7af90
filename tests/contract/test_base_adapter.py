"""The lifecycle rules BaseAdapter enforces for every adapter, driven by a minimal adapter."""

from __future__ import annotations

import asyncio

import pytest

from voice_server_moshi.adapter import BaseAdapter, VoiceModelAdapter, VoiceModelConfig
from voice_server_moshi.capabilities import Capabilities
from voice_server_moshi.errors import ConnectError, LifecycleError
from voice_server_moshi.events import (
    AudioChunk,
    Connected,
    Disconnected,
    Error,
    Event,
    SpeechStarted,
    Transcript,
)
from voice_server_moshi.formats import AudioFormat


class EchoAdapter(BaseAdapter):
    """Echoes each caller chunk back as agent audio; can be told to fail."""

    adapter_name = "echo"
    default_capabilities = Capabilities(agent_transcript=True)

    def __init__(self, *, fail_open: bool = False, slow_close: bool = False, **kw: int) -> None:
        super().__init__(**kw)
        self.fail_open = fail_open
        self.slow_close = slow_close
        self.received: list[bytes] = []
        self.closed = 0

    async def _open(self, config: VoiceModelConfig) -> str:
        if self.fail_open:
            raise ConnectError("peer refused")
        self._emit(Transcript(role="agent", text="too early"))  # dropped: not connected yet
        return "session-1"

    async def _send_audio(self, chunk: bytes) -> None:
        self.received.append(chunk)
        self._emit(AudioChunk(audio=chunk, format=self.config.audio))

    async def _close(self) -> None:
        self.closed += 1
        if self.slow_close:
            await asyncio.sleep(60)


async def collect(adapter: BaseAdapter) -> list[Event]:
    return [e async for e in adapter.events()]


async def test_connected_first_disconnected_last_exactly_once() -> None:
    a = EchoAdapter()
    assert isinstance(a, VoiceModelAdapter)
    await a.connect(VoiceModelConfig(call_id="c1"))
    await a.send_audio(b"\x00\x01" * 160)
    await a.disconnect()
    await a.disconnect()  # idempotent
    seen = await collect(a)
    assert [e.name for e in seen] == ["connected", "audio-chunk", "disconnected"]
    assert isinstance(seen[0], Connected) and seen[0].session_id == "session-1"
    assert isinstance(seen[-1], Disconnected) and seen[-1].reason == "client"
    assert a.closed == 1


async def test_send_audio_before_connect_and_after_disconnect_raise() -> None:
    a = EchoAdapter()
    with pytest.raises(LifecycleError, match="before the session is connected"):
        await a.send_audio(b"\x00\x00")
    await a.connect(VoiceModelConfig())
    await a.disconnect()
    with pytest.raises(LifecycleError, match="after the session ended"):
        await a.send_audio(b"\x00\x00")


async def test_partial_sample_raises_value_error_and_session_goes_on() -> None:
    a = EchoAdapter()
    await a.connect(VoiceModelConfig(audio=AudioFormat(encoding="pcm16")))
    with pytest.raises(ValueError, match="not whole pcm16 samples"):
        await a.send_audio(b"\x00\x01\x02")
    with pytest.raises(TypeError):
        await a.send_audio("text")  # type: ignore[arg-type]
    await a.send_audio(b"\x00\x01")
    assert a.received == [b"\x00\x01"]
    await a.disconnect()
    names = [e.name for e in await collect(a)]
    assert names == ["connected", "audio-chunk", "disconnected"]


async def test_mulaw_accepts_any_byte_count() -> None:
    a = EchoAdapter()
    await a.connect(VoiceModelConfig(audio=AudioFormat(encoding="mulaw")))
    await a.send_audio(b"\xff" * 3)
    assert a.received == [b"\xff" * 3]
    await a.disconnect()


async def test_failed_connect_raises_and_emits_nothing() -> None:
    a = EchoAdapter(fail_open=True)
    with pytest.raises(ConnectError):
        await a.connect(VoiceModelConfig())
    assert await collect(a) == []
    with pytest.raises(LifecycleError):
        await a.connect(VoiceModelConfig())


async def test_peer_failure_gives_fatal_error_then_disconnected_and_nothing_after() -> None:
    a = EchoAdapter()
    await a.connect(VoiceModelConfig())
    await a._fail("peer-gone", "socket closed", close_code=1006, reason="peer-lost")
    a._emit(SpeechStarted(t_ms=1.0, source="local-vad"))  # after the end: dropped
    await a.disconnect()
    seen = await collect(a)
    assert [e.name for e in seen] == ["connected", "error", "disconnected"]
    err, disc = seen[1], seen[2]
    assert isinstance(err, Error) and err.fatal and err.code == "peer-gone"
    assert isinstance(disc, Disconnected) and disc.close_code == 1006


async def test_teardown_that_hangs_is_time_boxed(monkeypatch: pytest.MonkeyPatch) -> None:
    import voice_server_moshi.adapter as mod

    monkeypatch.setattr(mod, "TEARDOWN_TIMEOUT_S", 0.2)
    a = EchoAdapter(slow_close=True)
    await a.connect(VoiceModelConfig())
    await asyncio.wait_for(a.disconnect(), 5)
    assert [e.name for e in await collect(a)][-1] == "disconnected"


async def test_callbacks_sync_and_async_and_a_raising_one_is_contained() -> None:
    a = EchoAdapter()
    sync_seen: list[str] = []
    async_seen: list[str] = []

    async def on_audio(e: Event) -> None:
        async_seen.append(e.name)

    def boom(e: Event) -> None:
        raise RuntimeError("host bug")

    a.on("*", lambda e: sync_seen.append(e.name))
    a.on("audio-chunk", on_audio)
    unsubscribe = a.on("connected", boom)
    with pytest.raises(ValueError, match="unknown event name"):
        a.on("audio_chunk", boom)
    await a.connect(VoiceModelConfig())
    unsubscribe()
    await a.send_audio(b"\x00\x00")
    await a.disconnect()
    await asyncio.sleep(0)
    assert sync_seen == ["connected", "audio-chunk", "disconnected"]
    assert async_seen == ["audio-chunk"]


async def test_background_task_crash_ends_the_call() -> None:
    a = EchoAdapter()
    await a.connect(VoiceModelConfig())

    async def crash() -> None:
        raise RuntimeError("reader bug")

    a._spawn(crash(), "reader")
    seen = await asyncio.wait_for(collect(a), 5)
    assert [e.name for e in seen] == ["connected", "error", "disconnected"]
    assert isinstance(seen[1], Error) and "reader bug" in seen[1].message


async def test_slow_consumer_memory_is_bounded_and_lifecycle_survives() -> None:
    a = EchoAdapter(max_queued_events=20)
    await a.connect(VoiceModelConfig())
    for _ in range(500):
        await a.send_audio(b"\x00\x00" * 160)
    a._emit(Transcript(role="agent", text="hello"))
    assert len(a._queue) <= 20
    await a.disconnect()
    seen = await collect(a)
    assert seen[0].name == "connected" and seen[-1].name == "disconnected"
    assert "transcript" in [e.name for e in seen]
    assert a.counters["events_dropped"] >= 480


async def test_one_consumer_at_a_time() -> None:
    a = EchoAdapter()
    it = a.events()
    with pytest.raises(LifecycleError, match="already has a consumer"):
        a.events()
    await a.connect(VoiceModelConfig())
    await a.disconnect()
    assert [e.name async for e in it] == ["connected", "disconnected"]


async def test_events_before_connected_are_not_delivered() -> None:
    a = EchoAdapter()
    await a.connect(VoiceModelConfig())
    await a.disconnect()
    assert "transcript" not in [e.name for e in await collect(a)]


async def test_second_connect_is_refused() -> None:
    a = EchoAdapter()
    await a.connect(VoiceModelConfig())
    with pytest.raises(LifecycleError, match="one call"):
        await a.connect(VoiceModelConfig())
    await a.disconnect()

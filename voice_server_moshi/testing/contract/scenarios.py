"""The contract scenarios, as a pytest test module, run against every provider.

Each test records the provider's normalized event sequence for the parity report, then
checks the parity rules (ordering, frame format, capability-consistent absences) and the
scenario's own expectations. Run them with the plugin:

    pytest -p voice_server_moshi.testing.contract.plugin \
        --pyargs voice_server_moshi.testing.contract.scenarios --contract-only NAME

or import them into a test module of your own suite (``from
voice_server_moshi.testing.contract.scenarios import *``), the plugin enabled in your root
conftest.py. See docs/contract-suite.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.errors import ConnectError, SteeringUnsupportedError
from voice_server_moshi.events import (
    AudioChunk,
    Connected,
    Disconnected,
    Error,
    Event,
    Interruption,
    SpeechEnded,
    SpeechStarted,
    Steering,
    Transcript,
)
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.testing.fakes._server import FakePeer

from .framework import END_BOUND_S, STEER_BOUND_S, PeerCannot, Provider, in_call
from .plugin import Recorder

# Definition order (= run order), not sorted.
__all__ = [  # noqa: RUF022
    "pytestmark",
    "test_connect",
    "test_connect_refused",
    "test_caller_speaks_then_pauses",
    "test_agent_speaks",
    "test_caller_transcript",
    "test_barge_in",
    "test_peer_error",
    "test_peer_closes",
    "test_peer_vanishes",
    "test_peer_restarts",
    "test_malformed_audio",
    "test_host_disconnects_mid_speech",
    "test_slow_consumer",
    "test_steering",
]

# Explicit, so the scenarios also run where pytest-asyncio is in strict mode (its default).
pytestmark = pytest.mark.asyncio


def _chunks(events: Sequence[Event]) -> list[AudioChunk]:
    return [e for e in events if isinstance(e, AudioChunk)]


async def test_connect(provider: Provider, peer: object, rec: Recorder) -> None:
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        first = await call.wait_name("connected")
        await call.quiet(200)
        await call.hang_up()
    rec("connect", call.events, adapter.capabilities, call.fmt)
    assert isinstance(first, Connected) and first.session_id
    last = call.events[-1]
    assert isinstance(last, Disconnected) and last.reason == "client"


async def test_connect_refused(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("connect-refused")
    adapter = provider.make_adapter(peer, bad_credentials=True)
    with pytest.raises(ConnectError) as info:
        await adapter.connect(VoiceModelConfig(audio=provider.call_format))
    events = [e async for e in adapter.events()]
    rec.raw("connect-refused", [f"raises {type(info.value).__name__}", *[e.name for e in events]],
            note=str(info.value))
    assert events == [], "a failed connect must emit no event at all"
    assert "wrong" not in str(info.value), "the error message must not carry the credential"


async def test_caller_speaks_then_pauses(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("caller-speaks-then-pauses")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(300)
        await call.speak(800)
        started = await call.wait_name("speech-started")
        await call.quiet(1200)
        ended = await call.wait_name("speech-ended")
        await call.hang_up()
    rec("caller-speaks-then-pauses", call.events, adapter.capabilities, call.fmt)
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert started.t_ms <= ended.t_ms
    provider.check_peer_side(peer, "caller-speaks-then-pauses")


async def test_agent_speaks(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("agent-speaks")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(200)
        await provider.agent_speaks(peer, call, 1000)
        await call.wait_for(lambda _e: len(_chunks(call.events)) >= 1000 // call.fmt.frame_ms)
        await call.quiet(300)
        await call.hang_up()
    rec("agent-speaks", call.events, adapter.capabilities, call.fmt)
    chunks = _chunks(call.events)
    assert sum(c.duration_ms for c in chunks) >= 1000
    if isinstance(peer, FakePeer):
        # The fakes speak a tone: it must arrive as a tone, not noise or silence.
        pcm = g711.decode(b"".join(c.audio for c in chunks[2:-2]), call.fmt.encoding)
        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
        assert 3000 < rms < 8000, f"agent tone arrived with rms {rms:.0f}"
        provider.check_peer_side(peer, "agent-speaks")


async def test_caller_transcript(provider: Provider, peer: object, rec: Recorder) -> None:
    """The caller's words: an adapter that claims ``caller_transcript`` delivers at least
    one final caller transcript for a second of caller speech, before ``disconnected``;
    one that does not claim it delivers none (the parity rules check every scenario)."""
    rec.na_if_cannot("caller-transcript")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(300)
        await call.speak(1000)
        await call.quiet(1500)
        await call.hang_up()
    claimed = adapter.capabilities.caller_transcript
    rec("caller-transcript", call.events, adapter.capabilities, call.fmt,
        note="caller_transcript claimed" if claimed else "caller_transcript not claimed")
    caller = [e for e in call.events if isinstance(e, Transcript) and e.role == "caller"]
    if claimed:
        assert any(e.final and e.text for e in caller), "claimed, but no final caller words"
        assert isinstance(call.events[-1], Disconnected)
    else:
        assert not caller


async def test_barge_in(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("barge-in")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        # Read once connected: a remote Moshi adapter learns from the server's metadata
        # whether it gets caller transcripts (``connected`` carries the final set).
        caps = adapter.capabilities
        await call.quiet(200)
        # As connected reported them: some are known only once connected (a remote
        # Moshi server's steering, from its metadata).
        caps = adapter.capabilities
        await provider.start_long_speech(peer, call, 5000)
        await call.wait_for(lambda _e: len(_chunks(call.events)) >= 10)
        await call.speak(600)
        await call.wait_name("interruption" if caps.interruption else "speech-started")
        await call.quiet(900)
        await call.hang_up()
    rec("barge-in", call.events, caps, call.fmt)
    ev = call.events
    started = next(i for i, e in enumerate(ev) if isinstance(e, SpeechStarted))
    if caps.interruption:
        cut = next(i for i, e in enumerate(ev) if isinstance(e, Interruption))
        assert started < cut, "speech-started must come before the interruption"
        late = _chunks(ev[cut:])
        assert not late, f"{len(late)} audio-chunks of the interrupted reply after interruption"
        assert sum(c.duration_ms for c in _chunks(ev)) < 5000, "the reply was not cut short"
    provider.check_peer_side(peer, "barge-in")


async def test_peer_error(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("peer-error")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(200)
        try:
            await provider.peer_error(peer)
        except PeerCannot as exc:
            rec.na("peer-error", str(exc))
        err = await call.wait_name("error")
        assert isinstance(err, Error)
        await call.quiet(400)
        # A peer error is fatal only when the peer closes the socket after it.
        fatal = any(isinstance(e, Error) and e.fatal for e in call.events)
        if fatal:
            await call.wait_ended()
        else:
            assert not any(isinstance(e, Disconnected) for e in call.events)
            await call.hang_up()
    rec("peer-error", call.events, adapter.capabilities, call.fmt)
    last = call.events[-1]
    assert isinstance(last, Disconnected)
    assert last.reason == ("client" if not fatal else last.reason)
    if fatal:
        assert last.close_code not in (None, 1000), "a fatal peer error carries its close code"


async def test_peer_closes(
    provider: Provider, close_code: int | None, peer: object, rec: Recorder
) -> None:
    scenario = f"peer-closes {close_code}" if close_code is not None else "peer-closes"
    rec.na_if_cannot(scenario)
    assert close_code is not None, f"{provider.name} declares no close codes and no reason"
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(200)
        t0 = time.monotonic()
        await provider.peer_close(peer, close_code)
        await call.wait_ended()
        took = time.monotonic() - t0
    rec(scenario, call.events, adapter.capabilities, call.fmt)
    last = call.events[-1]
    assert isinstance(last, Disconnected) and last.close_code == close_code
    assert took < END_BOUND_S
    if close_code in provider.normal_close_codes:
        assert not [e for e in call.events if isinstance(e, Error) and e.fatal]
    else:
        fatal = call.events[-2]
        assert isinstance(fatal, Error) and fatal.fatal, "an abnormal close is a fatal error"


@pytest.mark.private_peer
async def test_peer_vanishes(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("peer-vanishes")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(400)
        t0 = time.monotonic()
        await provider.peer_vanish(peer)
        await call.wait_ended()
        took = time.monotonic() - t0
    rec("peer-vanishes", call.events, adapter.capabilities, call.fmt,
        note=f"ended {took:.1f} s after the peer vanished")
    fatal = call.events[-2]
    assert isinstance(fatal, Error) and fatal.fatal
    assert took < END_BOUND_S


async def test_peer_restarts(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("peer-restarts")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(200)
        try:
            resumed = await provider.peer_restart(peer)
        except PeerCannot as exc:
            rec.na("peer-restarts", str(exc))
        assert resumed, "the adapter did not resume the same conversation"
        await call.quiet(300)
        before = len(_chunks(call.events))
        await provider.agent_speaks(peer, call, 400)
        await call.wait_for(lambda _e: len(_chunks(call.events)) - before >= 400 // 20)
        await call.hang_up()
    rec("peer-restarts", call.events, adapter.capabilities, call.fmt)
    assert not [e for e in call.events if isinstance(e, Error) and e.fatal]
    last = call.events[-1]
    assert isinstance(last, Disconnected) and last.reason == "client"


async def test_malformed_audio(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("malformed-audio")
    fmt = AudioFormat("pcm16", provider.call_format.sample_rate, 20)
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter, fmt) as call:
        await call.quiet(200)
        with pytest.raises(ValueError, match="whole"):
            await adapter.send_audio(b"\x01\x02\x03")
        with pytest.raises(TypeError):
            await adapter.send_audio("not audio")  # type: ignore[arg-type]
        await call.quiet(200)
        await provider.agent_speaks(peer, call, 400)
        await call.wait_for(lambda _e: len(_chunks(call.events)) >= 400 // fmt.frame_ms)
        await call.hang_up()
    rec("malformed-audio", call.events, adapter.capabilities, fmt,
        note="pcm16 call; 3-byte chunk -> ValueError, str -> TypeError, session goes on")
    assert not [e for e in call.events if isinstance(e, Error)]
    assert not call.send_errors, f"caller audio after the bad chunk failed: {call.send_errors}"


async def test_host_disconnects_mid_speech(
    provider: Provider, peer: object, rec: Recorder
) -> None:
    rec.na_if_cannot("host-disconnects-mid-speech")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.quiet(200)
        await provider.start_long_speech(peer, call, 5000)
        await call.wait_for(lambda _e: len(_chunks(call.events)) >= 5)
        t0 = time.monotonic()
        await call.hang_up()
        took = time.monotonic() - t0
    rec("host-disconnects-mid-speech", call.events, adapter.capabilities, call.fmt)
    last = call.events[-1]
    assert isinstance(last, Disconnected) and last.reason == "client"
    assert took < END_BOUND_S
    if isinstance(peer, FakePeer):
        session = peer.sessions[-1]
        await asyncio.wait_for(session.closed.wait(), END_BOUND_S)
        assert session.ws.close_code == 1000, "the peer must see a clean close from the host"


async def test_slow_consumer(provider: Provider, peer: object, rec: Recorder) -> None:
    rec.na_if_cannot("slow-consumer")
    bound = 32
    adapter = provider.make_adapter(peer, max_queued_events=bound)
    async with in_call(provider, adapter, consume=False) as call:
        await call.quiet(200)
        await provider.agent_speaks_unobserved(peer, adapter, 2000)
        await call.quiet(200)
        await call.hang_up()
    rec("slow-consumer", call.events, adapter.capabilities, call.fmt,
        note=f"max_queued_events={bound}; nobody reads events while the agent talks 2 s")
    dropped = getattr(adapter, "counters", {}).get("events_dropped", 0)
    assert dropped > 0, "2 s of agent audio should overflow a 32-event queue"
    assert len(call.events) <= bound + 2, "queue grew past its bound"


#: The line the host has the agent say (words every tokenizer here can carry).
STEER_LINE = "hello there, this is a test"


def _steer(rid: str, status: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, Steering) and e.request_id == rid and e.status == status


async def test_steering(provider: Provider, peer: object, rec: Recorder) -> None:
    """The host asks the agent to say a line (capabilities.steering): it comes back as agent
    audio and agent transcript within STEER_BOUND_S; a second, long line is cancelled
    after it started and never finishes. Without the capability, say_text raises."""
    rec.na_if_cannot("steering")
    adapter = provider.make_adapter(peer)
    async with in_call(provider, adapter) as call:
        await call.wait_name("connected")
        caps = adapter.capabilities
        if not caps.steering:
            with pytest.raises(SteeringUnsupportedError):
                await adapter.say_text(STEER_LINE)  # type: ignore[attr-defined]
            await call.hang_up()
            rec.na("steering", "capabilities.steering is False (say_text raises "
                   "SteeringUnsupportedError)")
        await call.quiet(200)
        t0 = time.monotonic()
        rid = await adapter.say_text(STEER_LINE)  # type: ignore[attr-defined]
        await call.wait_for(_steer(rid, "finished"), timeout_s=STEER_BOUND_S)
        took = time.monotonic() - t0
        long_id = await adapter.say_text(" ".join([STEER_LINE] * 6))  # type: ignore[attr-defined]
        await call.wait_for(_steer(long_id, "started"), timeout_s=STEER_BOUND_S)
        await adapter.cancel_say()  # type: ignore[attr-defined]
        await call.wait_for(_steer(long_id, "cancelled"), timeout_s=STEER_BOUND_S)
        await call.quiet(300)
        await call.hang_up()
    rec("steering", call.events, caps, call.fmt, note=f"line back in {took:.1f} s")
    ev = call.events
    start = next(i for i, e in enumerate(ev) if _steer(rid, "started")(e))
    end = next(i for i, e in enumerate(ev) if _steer(rid, "finished")(e))
    said = " ".join(e.text for e in ev[start:end]
                    if isinstance(e, Transcript) and e.role == "agent" and e.final)
    assert STEER_LINE in said, f"agent transcript {said!r} lacks the line"
    assert _chunks(ev[start:end]), "no agent audio while the line was said"
    assert took < STEER_BOUND_S
    assert not any(_steer(long_id, "finished")(e) for e in ev), "the cancelled line finished"

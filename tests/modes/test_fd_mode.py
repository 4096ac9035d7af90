"""The full-duplex mode end to end: registry, real MoshiAdapter, scripted agent, recorder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.audio.wavio import to_int16
from voice_server_moshi.corpus.agent import ScriptedAgentTransport, text_schedule
from voice_server_moshi.corpus.assemble import build_call
from voice_server_moshi.corpus.store import bundled_clips
from voice_server_moshi.errors import SettingsError
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.host.recorder import Recorder
from voice_server_moshi.modes.clock import ManualClock, RealClock
from voice_server_moshi.modes.full_duplex import FullDuplexMode
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.registry import load_registry

FMT = AudioFormat("mulaw", 8000, 20)


@pytest.fixture(scope="module")
def corpus_call():  # type: ignore[no-untyped-def]
    return build_call(bundled_clips(), 1, 20.0)


def make_mode(call, settings=None, clock=None, recorder=None):  # type: ignore[no-untyped-def]
    transport = ScriptedAgentTransport(call.agent, 8000, text_schedule(call.agent_segments))
    adapter = MoshiAdapter(transport=transport)
    rec = recorder or Recorder()
    mode = load_registry().create_mode(
        "full-duplex", settings or {}, adapter=adapter, host=rec,
        config=VoiceModelConfig(audio=FMT), clock=clock or ManualClock(),
    )
    rec.now_ms = lambda: mode.t_ms
    return mode, rec, transport, adapter


async def play(mode, audio: bytes, tail_frames: int = 50) -> None:  # type: ignore[no-untyped-def]
    await mode.start()
    n = FMT.bytes_per_frame
    for i in range(0, len(audio), n):
        mode.push_caller_audio(audio[i : i + n])
        await mode.tick()
        assert await mode.settle()
    for _ in range(tail_frames):
        await mode.tick()
        await mode.settle()


def caller_bytes(call) -> bytes:  # type: ignore[no-untyped-def]
    return g711.encode(to_int16(call.caller), "mulaw")


def test_registered_with_settings_class() -> None:
    reg = load_registry()
    assert "full-duplex" in reg.modes
    with pytest.raises(SettingsError) as exc:
        reg.create_mode("full-duplex", {"max_backchannel_ms": 10, "nope": 1},
                        adapter=MoshiAdapter(), host=Recorder())
    assert "max_backchannel_ms" in str(exc.value) and "nope" in str(exc.value)


def test_host_must_implement_the_callbacks() -> None:
    with pytest.raises(TypeError, match="HostCallbacks"):
        FullDuplexMode(adapter=MoshiAdapter(), host=object())  # type: ignore[arg-type]


async def test_turns_backchannel_and_barge_in_on_a_corpus_call(corpus_call) -> None:  # type: ignore[no-untyped-def]
    mode, rec, _, _ = make_mode(corpus_call)
    await play(mode, caller_bytes(corpus_call))
    await mode.stop()
    names = rec.names()
    assert names.count("disconnected") == 1 and names[-1] == "disconnected"
    starts = rec.of("user-turn-started")
    labelled = [s for s in corpus_call.caller_segments if s.kind != "backchannel"]
    assert len(starts) == len(labelled)
    for seg, r in zip(labelled, starts, strict=True):
        assert abs(r.t_ms - seg.start_ms) < 150
        assert bool(r.data["barge_in"]) == (seg.kind == "barge-in")
    assert [o.verdict for o in mode.overlaps].count("backchannel") == sum(
        s.kind == "backchannel" for s in corpus_call.caller_segments)
    agent_starts = rec.of("agent-turn-started")
    assert len(agent_starts) == len(corpus_call.agent_segments)
    for seg, r in zip(corpus_call.agent_segments, agent_starts, strict=True):
        # Played out after the adapter's 80 ms framing, resampling and the playout buffer.
        assert 0 < r.t_ms - seg.start_ms < 300
    # Agent audio flows every frame, silence included.
    assert len(rec.agent_audio) == mode.t_ms / 20 * FMT.bytes_per_frame
    assert any(r.name == "transcript" and r.data["role"] == "agent" for r in rec.records)


async def test_turn_requests_are_harmless_noops(corpus_call) -> None:  # type: ignore[no-untyped-def]
    mode, rec, transport, _ = make_mode(corpus_call)
    await mode.start()
    frames_before = transport.frames_in
    for _ in range(5):
        mode.create_response(instructions="say hi")
        mode.commit_turn()
        mode.cancel_response()
    await asyncio.sleep(0.05)
    assert transport.frames_in == frames_before
    assert mode.counters["ignored_requests"] == 15
    await mode.stop()
    assert rec.names() == ["disconnected"]


async def test_silence_is_sent_when_caller_media_stops(corpus_call) -> None:  # type: ignore[no-untyped-def]
    # Real-time clock, sped up: no caller media at all, yet Moshi keeps getting frames.
    mode, _rec, transport, adapter = make_mode(corpus_call, clock=RealClock(speed=10.0))
    await mode.start()
    await asyncio.sleep(0.2)  # ~2 s of call time at 10x
    await mode.stop()
    assert mode.counters["gap_fill_frames"] >= 20
    assert transport.frames_in >= 4
    assert adapter.counters["caller_ms"] >= 400


async def test_peer_vanishing_gives_error_then_one_disconnected(corpus_call) -> None:  # type: ignore[no-untyped-def]
    mode, rec, transport, _ = make_mode(corpus_call)
    await mode.start()
    audio = caller_bytes(corpus_call)
    for i in range(0, 160 * 100, 160):
        mode.push_caller_audio(audio[i : i + 160])
        await mode.tick()
        await mode.settle()
    transport.vanish()
    await asyncio.wait_for(mode.wait_ended(), 5)
    for _ in range(10):  # a host still ticking after the end: nothing more happens
        await mode.tick()
    await mode.stop()
    names = rec.names()
    assert names.count("disconnected") == 1 and names[-1] == "disconnected"
    err = rec.of("error")
    assert err and err[0].data["fatal"] and err[0].data["code"] == "peer_vanished"


async def test_a_failing_host_callback_does_not_break_the_call(corpus_call) -> None:  # type: ignore[no-untyped-def]
    class Flaky(Recorder):
        def on_agent_audio(self, audio: bytes, t_ms: float) -> None:
            raise RuntimeError("host bug")

    mode, rec, _, _ = make_mode(corpus_call, recorder=Flaky())
    await play(mode, caller_bytes(corpus_call)[: 8000 * 5], tail_frames=0)
    await mode.stop()
    assert rec.of("user-turn-started") and rec.names()[-1] == "disconnected"


@pytest.mark.parametrize("policy", ["flush", "duck"])
async def test_barge_in_policy(corpus_call, policy: str) -> None:  # type: ignore[no-untyped-def]
    mode, rec, _, _ = make_mode(corpus_call, {"barge_in_policy": policy})
    await play(mode, caller_bytes(corpus_call))
    await mode.stop()
    barge = [r for r in rec.of("user-turn-started") if r.data["barge_in"]]
    assert barge
    agent = g711.decode(bytes(rec.agent_audio), "mulaw").astype(np.float64)
    if policy == "flush":
        assert mode.counters["playout_flushes"] == len(barge)
    else:
        # Agent audio while a barge-in turn is open is attenuated by duck_db (12 dB).
        r = barge[0]
        end = next(e for e in rec.of("user-turn-ended") if e.t_ms > r.t_ms)
        a, b = int(r.data["decided_ms"] * 8), int(end.data["decided_ms"] * 8)
        assert np.abs(agent[a:b]).max() < 32768 * 10 ** (-12 / 20)


async def test_caller_chunks_must_be_whole_samples(corpus_call) -> None:  # type: ignore[no-untyped-def]
    mode, _, _, _ = make_mode(corpus_call, clock=ManualClock())
    fmt16 = AudioFormat("pcm16", 8000, 20)
    mode.config = VoiceModelConfig(audio=fmt16)
    with pytest.raises(ValueError, match="whole"):
        mode.push_caller_audio(b"\x00\x01\x02")

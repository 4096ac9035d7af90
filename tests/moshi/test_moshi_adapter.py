"""The Moshi adapter over a scripted in-memory transport (real audio path, no network)."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest

from voice_server_moshi.adapter import VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.errors import ConnectError, LifecycleError, ServerBusyError
from voice_server_moshi.events import (
    AudioChunk,
    Connected,
    Disconnected,
    Error,
    SpeechEnded,
    SpeechStarted,
    Transcript,
)
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.moshi.transport import AgentAudio, AgentText, PeerClosed, PeerError
from voice_server_moshi.testing.calls import CallRecorder as Call
from voice_server_moshi.testing.scripted_transport import ScriptedTransport

MULAW = AudioFormat("mulaw", 8000, 20)
PCM16 = AudioFormat("pcm16", 8000, 20)


def tone(n: int, freq: float = 440.0, rate: int = 8000, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(n) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def settings(**kw: object) -> MoshiSettings:
    return MoshiSettings(transport="embedded", **kw)  # type: ignore[arg-type]


async def _start(transport: ScriptedTransport, fmt: AudioFormat = MULAW, **kw: object) -> Call:
    return await Call(MoshiAdapter(settings(**kw), transport=transport)).start("t1", fmt)


async def test_lifecycle_and_capabilities() -> None:
    tr = ScriptedTransport()
    call = await _start(tr)
    assert tr.opened_with == "t1"
    await call.adapter.send_audio(g711.encode(tone(160), "mulaw"))
    await call.end()
    names = [e.name for e in call.events]
    assert names[0] == "connected" and names[-1] == "disconnected"
    assert names.count("connected") == names.count("disconnected") == 1
    first = call.events[0]
    assert isinstance(first, Connected) and first.session_id.startswith("scripted-")
    caps = first.capabilities
    assert caps.full_duplex and caps.agent_transcript
    assert not (caps.server_vad or caps.interruption or caps.caller_transcript)
    assert tr.closed
    with pytest.raises(LifecycleError):
        await call.adapter.send_audio(b"\xff" * 160)


async def test_connect_error_from_transport_propagates_without_events() -> None:
    tr = ScriptedTransport(open_error=ServerBusyError("server busy: test"))
    adapter = MoshiAdapter(settings(), transport=tr)
    with pytest.raises(ServerBusyError, match="server busy"):
        await adapter.connect(VoiceModelConfig(audio=MULAW))
    assert [e async for e in adapter.events()] == []


async def test_missing_embedded_extra_is_a_clear_connect_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "voice_server_moshi.moshi.embedded", None)
    adapter = MoshiAdapter(MoshiSettings())
    with pytest.raises(ConnectError, match=r"voice-server-moshi\[embedded\]"):
        await adapter.connect(VoiceModelConfig(audio=MULAW))


async def test_malformed_audio_is_rejected_and_the_call_goes_on() -> None:
    tr = ScriptedTransport()
    call = await _start(tr, PCM16)
    with pytest.raises(ValueError, match="not whole pcm16 samples"):
        await call.adapter.send_audio(b"\x01\x02\x03")
    with pytest.raises(TypeError):
        await call.adapter.send_audio("text")  # type: ignore[arg-type]
    for _ in range(8):  # 160 ms: two Moshi frames
        await call.adapter.send_audio(tone(160).tobytes())
    await call.wait_for(lambda: len(tr.sent) >= 2)
    await call.end()
    assert call.of(Error) == []
    assert isinstance(call.events[-1], Disconnected) and call.events[-1].reason == "client"


@pytest.mark.parametrize("fmt", [MULAW, PCM16, AudioFormat("alaw", 8000, 20),
                                 AudioFormat("pcm16", 16000, 10)])
async def test_frame_accounting_and_echo_through_the_whole_path(fmt: AudioFormat) -> None:
    tr = ScriptedTransport(echo=True)
    call = await _start(tr, fmt)
    n_chunks = 1000 // fmt.frame_ms  # one second of caller audio, faster than real time
    sig = tone(n_chunks * fmt.samples_per_frame, 440.0, fmt.sample_rate)
    for k in range(n_chunks):
        part = sig[k * fmt.samples_per_frame : (k + 1) * fmt.samples_per_frame]
        await call.adapter.send_audio(g711.encode(part, fmt.encoding))
    # 1 s at 24 kHz is 24000 samples: 12 whole Moshi frames (12.5 would need the rest).
    await call.wait_for(lambda: call.adapter.counters["chunks_out"] >= 12 * 80 // fmt.frame_ms)
    counters = dict(call.adapter.counters)
    await call.end()
    assert counters["frames_sent"] == 12 == len(tr.sent)
    assert counters["frames_received"] == 12
    assert counters.get("late_frames", 0) == 0 and counters.get("silence_frames", 0) == 0
    chunks = [e for e in call.events if isinstance(e, AudioChunk)]
    assert {len(c.audio) for c in chunks} == {fmt.bytes_per_frame}
    assert all(c.format == fmt for c in chunks)
    total_ms = sum(c.duration_ms for c in chunks)
    assert total_ms == 12 * 80  # no output withheld beyond whole frames of 80 ms
    # The tone comes back as the same tone: peak of the spectrum at 440 Hz, level kept.
    out = np.concatenate([g711.decode(c.audio, fmt.encoding) for c in chunks]).astype(float)
    steady = out[len(out) // 4 :]
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
    peak_hz = np.argmax(spectrum) * fmt.sample_rate / len(steady)
    assert abs(peak_hz - 440.0) < 5.0
    rms_in = 8000 / np.sqrt(2)
    assert 0.9 < np.sqrt(np.mean(steady**2)) / rms_in < 1.1


async def test_stall_fill_keeps_moshi_clock_running_and_late_audio_is_dropped() -> None:
    tr = ScriptedTransport(echo=True)
    call = await _start(tr, MULAW, stall_fill_ms=100)
    # The caller sends nothing: silence goes to Moshi anyway, and frames come back.
    await call.wait_for(lambda: len(tr.sent) >= 4)
    assert call.adapter.counters["silence_frames"] >= 16  # 4 Moshi frames of 20 ms fill
    assert all(not f.any() for f in tr.sent)
    assert call.adapter.counters["frames_received"] >= 4
    # Now the caller's delayed audio arrives in one burst: its time was filled already.
    burst = 50  # one second
    for _ in range(burst):
        await call.adapter.send_audio(g711.encode(tone(160), "mulaw"))
    adapter = call.adapter
    # Exactly the filled time is dropped from the late audio (no more: audio beyond the
    # fill is the caller sending ahead, which is allowed), so Moshi's input holds one
    # second in all: the caller's audio with its late part replaced by the fill.
    assert adapter.counters["late_frames"] == adapter.counters["silence_frames"]
    assert adapter._fed_ms == burst * 20
    assert adapter.counters["caller_ms"] == burst * 20
    await call.end()
    assert call.of(Error) == []


async def test_no_fill_while_the_caller_keeps_real_time() -> None:
    tr = ScriptedTransport()
    call = await _start(tr, MULAW, stall_fill_ms=200)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k in range(25):  # 0.5 s in real time
        await call.adapter.send_audio(g711.encode(tone(160), "mulaw"))
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - loop.time()))
    counters = dict(call.adapter.counters)
    await call.end()
    assert counters.get("silence_frames", 0) == 0
    assert counters.get("late_frames", 0) == 0


async def test_large_host_chunks_in_real_time_are_not_taken_for_stalls() -> None:
    # A host sending 300 ms chunks, each at the end of its 300 ms: gaps of 300 ms are its
    # cadence, not a stall; nothing may be dropped as late. (Before the first chunk the
    # cadence is unknown, so that gap is filled.)
    tr = ScriptedTransport()
    call = await _start(tr, MULAW, stall_fill_ms=100)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k in range(4):
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.3 - loop.time()))
        await call.adapter.send_audio(g711.encode(tone(2400), "mulaw"))
    counters = dict(call.adapter.counters)
    await call.end()
    assert counters.get("late_frames", 0) == 0
    assert counters["caller_ms"] == 1200


async def test_agent_text_becomes_word_transcripts() -> None:
    tr = ScriptedTransport(echo=True)
    call = await _start(tr)
    silence = g711.encode(np.zeros(160, np.int16), "mulaw")
    for _ in range(4):
        await call.adapter.send_audio(silence)
    await call.wait_for(lambda: call.adapter.counters["frames_received"] >= 1)
    for piece in (" hel", "lo", ",", " world"):
        tr.push(AgentText(piece))
    await call.wait_for(lambda: len(call.of(Transcript)) >= 5)
    await call.end()  # the pending word is final at the end of the session
    transcripts = [e for e in call.events if isinstance(e, Transcript)]
    assert [(t.text, t.final) for t in transcripts] == [
        ("hel", False), ("hello", False), ("hello,", False), ("hello,", True),
        ("world", False), ("world", True),
    ]
    assert {t.role for t in transcripts} == {"agent"}
    assert isinstance(call.events[-1], Disconnected)


async def test_peer_error_is_non_fatal() -> None:
    tr = ScriptedTransport()
    call = await _start(tr)
    tr.push(PeerError("model overloaded"))
    tr.push(PeerError("malformed message from the Moshi server: x", code="protocol_error"))
    await call.wait_for(lambda: len(call.of(Error)) == 2)
    assert call.adapter.state == "connected"
    await call.adapter.send_audio(b"\xff" * 160)
    await call.end()
    errors = call.of(Error)
    assert [(e.code, e.fatal) for e in errors] == [("peer_error", False), ("protocol_error", False)]


@pytest.mark.parametrize(
    ("closed", "code", "reason", "word"),
    [(PeerClosed(1011, "internal error", clean=True), "peer_closed", "peer-error",
      "closed the session"),
     (PeerClosed(1006, "connection lost", clean=False), "peer_vanished", "peer-vanished",
      "vanished")],
)
async def test_peer_close_gives_fatal_error_then_disconnected(
    closed: PeerClosed, code: str, reason: str, word: str
) -> None:
    tr = ScriptedTransport()
    call = await _start(tr)
    tr.push(AgentText(" bye"))
    tr.push(closed)
    await call.wait_for(lambda: call.adapter.state == "closed", within_s=5)
    await call.wait_ended(5)
    tail = call.events[-3:]
    assert isinstance(tail[0], Transcript) and tail[0].final and tail[0].text == "bye"
    err, disc = tail[1], tail[2]
    assert isinstance(err, Error) and err.fatal and err.code == code
    assert word in err.message and str(closed.code) in err.message
    assert isinstance(disc, Disconnected)
    assert disc.close_code == closed.code and disc.reason == reason
    assert tr.closed
    await call.adapter.disconnect()  # idempotent after the peer ended it
    assert [e.name for e in call.events].count("disconnected") == 1


async def test_normal_close_by_the_peer_ends_the_call_without_error() -> None:
    tr = ScriptedTransport()
    call = await _start(tr)
    tr.push(PeerClosed(1000, "session over", clean=True))
    await call.wait_for(lambda: call.adapter.state == "closed", within_s=5)
    await call.wait_ended(5)
    assert call.of(Error) == []
    disc = call.events[-1]
    assert isinstance(disc, Disconnected) and disc.reason == "peer" and disc.close_code == 1000


async def test_caller_vad_in_caller_stream_time() -> None:
    tr = ScriptedTransport()
    call = await _start(tr, vad="energy")  # white-noise "speech": a loudness VAD's test
    rng = np.random.default_rng(1)
    quiet = lambda n: (rng.standard_normal(n) * 30).astype(np.int16)  # noqa: E731
    loud = lambda n: (rng.standard_normal(n) * 6000).astype(np.int16)  # noqa: E731
    audio = np.concatenate([quiet(8000), loud(8000), quiet(12000)])  # 1 s, 1 s, 1.5 s
    for k in range(len(audio) // 160):
        await call.adapter.send_audio(g711.encode(audio[k * 160 : (k + 1) * 160], "mulaw"))
    await call.end()
    starts, ends = call.of(SpeechStarted), call.of(SpeechEnded)
    assert len(starts) == 1 and len(ends) == 1
    s, e = starts[0], ends[0]
    assert isinstance(s, SpeechStarted) and isinstance(e, SpeechEnded)
    assert s.source == e.source == "local-vad"
    assert 980 <= s.t_ms <= 1050
    assert 1950 <= e.t_ms <= 2400


async def test_cascade_vad_finds_real_speech_in_caller_stream_time() -> None:
    # The cascade VAD (opt-in, ADR 0085) wants speech, not noise: a corpus clip after 1 s of
    # line hiss.
    from voice_server_moshi.corpus.store import bundled_clips

    clip = bundled_clips()["u1"]
    tr = ScriptedTransport()
    call = await _start(tr, vad="cascade")
    rng = np.random.default_rng(1)
    quiet = lambda n: (rng.standard_normal(n) * 30).astype(np.int16)  # noqa: E731
    speech = np.clip(np.rint(clip.pcm * 16384), -32768, 32767).astype(np.int16)
    audio = np.concatenate([quiet(8000), speech, quiet(12000)])
    for k in range(len(audio) // 160):
        await call.adapter.send_audio(g711.encode(audio[k * 160 : (k + 1) * 160], "mulaw"))
    await call.end()
    starts, ends = call.of(SpeechStarted), call.of(SpeechEnded)
    assert len(starts) == 1 and len(ends) == 1
    assert 980 <= starts[0].t_ms <= 1060
    assert 900 + clip.duration_ms <= ends[0].t_ms <= 1400 + clip.duration_ms


async def test_agent_audio_of_any_length_is_reframed() -> None:
    tr = ScriptedTransport()
    call = await _start(tr)
    # Opus pages need not be 80 ms: push 7 ms, 33 ms and 40 ms of agent audio.
    for n in (168, 792, 960):
        tr.push(AgentAudio(np.full(n, 0.1, np.float32)))
    await call.wait_for(lambda: call.adapter.counters["chunks_out"] >= 4)
    await call.end()
    chunks = call.of(AudioChunk)
    assert len(chunks) == 4  # 80 ms in all: four 20 ms frames, nothing left over
    assert all(isinstance(c, AudioChunk) and len(c.audio) == 160 for c in chunks)


"""Steering through the full-duplex mode and the reference host (ADR 0070)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voice_server_moshi.adapter import (
    BaseAdapter,
    EventCallback,
    SteerableAdapter,
    VoiceModelAdapter,
    VoiceModelConfig,
)
from voice_server_moshi.audio import g711
from voice_server_moshi.capabilities import Capabilities
from voice_server_moshi.errors import SteeringUnsupportedError
from voice_server_moshi.events import Event, Steering
from voice_server_moshi.host.config import load_config
from voice_server_moshi.host.recorder import Recorder
from voice_server_moshi.host.reference import CallResult, ReferenceHost
from voice_server_moshi.host.tool_example import OrderStatusAgent, lookup_order
from voice_server_moshi.modes.full_duplex import FullDuplexMode
from voice_server_moshi.modes.steering_marks import SteeringMarks
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.testing.calls import speechlike

TEXT = "hello there, this is a test"


def sayable_words(dev_checkpoint: Path, text: str) -> list[str]:
    """The words of ``text`` as the dev model's text stream can carry them (its tiny
    tokenizer has no digits, for one: unknown pieces are dropped, never forced)."""
    import sentencepiece

    model = str(dev_checkpoint / "dev_tokenizer.model")
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    out = []
    for w in text.split():
        pieces = [sp.id_to_piece(t) for t in sp.encode(w) if t not in (0, 3)]
        word = "".join(pieces).replace("▁", "")
        if word:
            out.append(word)
    return out


def agent_words(result: CallResult, after_ms: float = 0.0) -> list[tuple[float, str]]:
    return [(r.t_ms, str(r.data["text"])) for r in result.records
            if r.name == "transcript" and r.data.get("role") == "agent"
            and r.data.get("final") and r.t_ms >= after_ms]


def contains_in_order(words: list[str], wanted: list[str]) -> bool:
    n = len(wanted)
    return any(words[i:i + n] == wanted for i in range(len(words) - n + 1))


def embedded_host(dev_checkpoint: Path) -> ReferenceHost:
    # The energy VAD: the callers here are buzz and speech-like noise, which the default
    # cascade rightly does not take for speech (its own tests use real speech).
    return ReferenceHost(load_config({"moshi": {
        "checkpoint": str(dev_checkpoint), "device": "cpu", "slots": 2,
        "connect_timeout_s": 120, "stall_fill_ms": 2000, "vad": "energy"}}))


def caller_audio(seconds: float) -> bytes:
    return g711.encode(speechlike(seconds, seed=5), "mulaw")


def one_caller_turn() -> bytes:
    """0.6 s of line noise, 1.6 s of loud buzz (one caller turn), 0.3 s of line noise."""
    rate = 8000
    rng = np.random.default_rng(1)
    t = np.arange(int(2.5 * rate)) / rate
    x = np.sign(np.sin(2 * np.pi * 200 * t)) * 4000 + rng.standard_normal(t.size) * 1500
    quiet = (t < 0.6) | (t >= 2.2)
    x[quiet] = rng.standard_normal(int(quiet.sum())) * 40
    return g711.encode(x.clip(-32768, 32767).astype(np.int16), "mulaw")


@pytest.mark.slow
async def test_create_response_text_reaches_embedded_moshi(dev_checkpoint: Path) -> None:
    result = await embedded_host(dev_checkpoint).run_call(
        caller_audio(1.0), clock="virtual", tail_ms=3000, says=[(800.0, TEXT)])
    ask = next(r for r in result.records if r.name == "say-request")
    steer = [(r.data["status"], r.t_ms) for r in result.records if r.name == "agent-steering"]
    assert [s for s, _ in steer] == ["queued", "started", "finished"]
    words = agent_words(result, ask.t_ms)
    wanted = sayable_words(dev_checkpoint, TEXT)
    assert contains_in_order([w for _, w in words], wanted)
    first = next(t for t, w in words if w == wanted[0])
    assert first - ask.t_ms <= 2000.0  # words back within 2 s of the request
    assert result.mode_stats["steer_requests"] == 1


@pytest.mark.slow
async def test_worked_tool_call_example(dev_checkpoint: Path) -> None:
    agent = OrderStatusAgent()
    result = await embedded_host(dev_checkpoint).run_call(
        one_caller_turn(), clock="virtual", tail_ms=4000, on_caller_turn_end=agent)
    assert len(agent.calls) == 1
    call = agent.calls[0]
    assert call.name == "lookup_order" and call.result == lookup_order("4217")
    assert call.said == "I looked up order 4217: it shipped on Tuesday."
    ended = next(r for r in result.records if r.name == "user-turn-ended")
    words = [w for _, w in agent_words(result, ended.t_ms)]
    assert contains_in_order(words, sayable_words(dev_checkpoint, call.said))


def test_a_host_without_steering_gets_a_clear_error_not_a_no_op() -> None:
    remote = MoshiAdapter(MoshiSettings(url="ws://127.0.0.1:1/api/chat"))
    assert remote.capabilities.steering is False
    mode = FullDuplexMode(adapter=remote, host=Recorder())
    assert mode.create_response() is None  # Moshi answers by itself: a logged no-op
    assert mode.create_response(instructions="be brief") is None
    with pytest.raises(SteeringUnsupportedError, match="cannot be steered"):
        mode.create_response(text="hello")
    with pytest.raises(SteeringUnsupportedError, match="cannot be steered"):
        mode.create_response(audio=b"\0\0" * 100, text="hi")
    assert mode.cancel_response() is None
    assert mode.counters["ignored_requests"] == 3


async def test_adapters_that_cannot_steer_raise_on_say() -> None:
    class Plain(BaseAdapter):
        adapter_name = "plain"

        async def _open(self, config: VoiceModelConfig) -> str:
            return "s"

        async def _send_audio(self, chunk: bytes) -> None: ...

        async def _close(self) -> None: ...

    plain = Plain()
    assert plain.capabilities.steering is False
    for call in (plain.say_text("hi"), plain.say_audio(b"\0\0", "hi"), plain.cancel_say()):
        with pytest.raises(SteeringUnsupportedError, match=r"capabilities\.steering is False"):
            await call
    embedded = MoshiAdapter(MoshiSettings(checkpoint="dev"))
    assert embedded.capabilities.steering is True


def test_steered_agent_turns_are_marked_for_hosts_that_take_the_mark() -> None:
    class NewHost:
        def on_agent_turn_started(self, t_ms: float, steered: bool = False) -> None: ...
        def on_agent_steering(self, request_id: str, status: str, t_ms: float) -> None: ...

    class OldHost:
        def on_agent_turn_started(self, t_ms: float) -> None: ...

    new, old = SteeringMarks(NewHost()), SteeringMarks(OldHost())
    assert new.notify and not old.notify
    for m in (new, old):
        m.on_event(Steering("say-1", "queued"), 100.0)
        assert not m.mark_turn(150.0)
        m.on_event(Steering("say-1", "started"), 200.0)
    assert new.mark_turn(260.0) and not old.mark_turn(260.0)  # old host: called as before
    new.on_event(Steering("say-1", "finished"), 1000.0)
    assert new.mark_turn(1300.0)  # its last frames are still playing out
    assert not new.mark_turn(2000.0)
    assert new.steered_turns == 2 and old.steered_turns == 1


class _Steerable(BaseAdapter):
    """A steerable adapter that records the steering calls (the mode's side only)."""

    adapter_name = "fake"
    default_capabilities = Capabilities(full_duplex=True, steering=True)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []

    async def _open(self, config: VoiceModelConfig) -> str:
        return "s"

    async def _send_audio(self, chunk: bytes) -> None: ...

    async def _close(self) -> None: ...

    async def say_text(self, text: str) -> str:
        self.calls.append(("text", text))
        return "say-1"

    async def say_audio(self, audio: bytes, text: str = "", *, sample_rate: int = 24000) -> str:
        self.calls.append(("audio", len(audio), text, sample_rate))
        return "say-2"

    async def cancel_say(self, flush: bool = True) -> None:
        self.calls.append(("cancel", flush))


class _ClaimsSteering:
    """A VoiceModelAdapter written from scratch (no BaseAdapter) whose capabilities say
    steering but which has no say/cancel methods: not a SteerableAdapter."""

    capabilities = Capabilities(full_duplex=True, steering=True)

    async def connect(self, config: VoiceModelConfig) -> None: ...

    async def send_audio(self, chunk: bytes) -> None: ...

    def events(self) -> AsyncIterator[Event]:
        raise NotImplementedError

    def on(self, name: str, callback: EventCallback) -> Callable[[], None]:
        return lambda: None

    async def disconnect(self) -> None: ...


def test_steering_is_the_steerable_adapter_protocol_not_a_capability_flag_alone() -> None:
    assert isinstance(_Steerable(), SteerableAdapter)
    assert isinstance(MoshiAdapter(MoshiSettings(checkpoint="dev")), SteerableAdapter)
    claims = _ClaimsSteering()
    assert isinstance(claims, VoiceModelAdapter) and not isinstance(claims, SteerableAdapter)
    mode = FullDuplexMode(adapter=claims, host=Recorder())
    with pytest.raises(SteeringUnsupportedError, match="the _ClaimsSteering adapter cannot"):
        mode.create_response(text="hello")  # refused up front, not an AttributeError later
    assert mode.cancel_response() is None


async def test_mode_maps_create_and_cancel_response_to_the_adapter() -> None:
    fake = _Steerable()
    mode = FullDuplexMode(adapter=fake, host=Recorder())
    pcm = np.zeros(2400, dtype="<i2").tobytes()
    t1 = mode.create_response(text="hi there")
    t2 = mode.create_response(audio=pcm, text="hi", sample_rate=16000)
    assert t1 is not None and t2 is not None
    assert await t1 == "say-1" and await t2 == "say-2"
    with pytest.raises(ValueError, match="needs some text"):
        mode.create_response(text="  ")
    t3 = mode.cancel_response()
    assert t3 is not None
    await t3
    assert fake.calls == [("text", "hi there"), ("audio", 4800, "hi", 16000), ("cancel", True)]
    assert mode.counters["steer_requests"] == 2 and mode.counters["playout_flushes"] == 1

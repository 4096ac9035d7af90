"""voice_server_moshi.livekit.RealtimeModel inside LiveKit's own AgentSession (no LiveKit
server: in-process audio input and output), and its RealtimeSession driven directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="needs the 'livekit' extra")

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm

from voice_server_moshi.corpus.sample import sample_call
from voice_server_moshi.host.tool_example import OrderStatusAgent
from voice_server_moshi.livekit import RealtimeModel
from voice_server_moshi.livekit.example import answer_tool_calls
from voice_server_moshi.livekit.harness import CallerInput, RecordingOutput, TextLog
from voice_server_moshi.livekit.options import BetweenTurns
from voice_server_moshi.livekit.session import MoshiRealtimeSession
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.testing.scripted_transport import ScriptedTransport

CALL_S = 30.0
#: Reproducible sampling (the call CLI's --seed 0): the same babble run to run.
SEEDS = {"text_seed": 0, "audio_seed": 0}
SAY = "hello there this is a test"


@dataclass
class Run:
    rt: MoshiRealtimeSession
    out: RecordingOutput
    text: TextLog
    duration_ms: float
    events: list[tuple[float, str, Any]] = field(default_factory=list)
    says: list[tuple[float, Any]] = field(default_factory=list)  # (call ms, handle)
    speeches: list[Any] = field(default_factory=list)  # every SpeechHandle LiveKit made
    interrupted: list[Any] = field(default_factory=list)  # those interrupted before close

    def of(self, name: str) -> list[Any]:
        return [e for _, n, e in self.events if n == name]


def caller_pcm(seconds: float) -> bytes:
    x = sample_call().caller[: int(8000 * seconds)]
    return (np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes()


async def until(cond: Callable[[], bool]) -> None:
    while not cond():  # noqa: ASYNC110 (the call's state sets no event)
        await asyncio.sleep(0.01)


async def wait_in_flight(rt: MoshiRealtimeSession, after_ms: float) -> None:
    # A say while a generation is in flight: LiveKit would queue it behind that one until
    # Moshi's next agent turn; the session ends the generation so the say goes next.
    await until(lambda: rt.mode.t_ms >= after_ms and rt._gen is not None)


async def agent_call(model: RealtimeModel, seconds: float, *, interrupt_say: bool,
                     tools: OrderStatusAgent | None = None) -> Run:
    session: AgentSession = AgentSession(llm=model)
    if tools is not None:  # the worked example's tool call, answered through say
        answer_tool_calls(session, tools)
    out = RecordingOutput()
    session.output.audio = out
    await session.start(agent=Agent(instructions=""))
    rt = session.current_agent._activity._rt_session  # type: ignore[union-attr]
    assert isinstance(rt, MoshiRealtimeSession)
    text = TextLog(clock=lambda: rt.mode.t_ms)
    session.output.transcription = text
    run = Run(rt, out, text, 0.0)
    for name in ("user_state_changed", "user_input_transcribed", "conversation_item_added",
                 "error"):
        session.on(name, lambda ev, name=name: run.events.append((rt.mode.t_ms, name, ev)))
    session.on("speech_created", lambda ev: run.speeches.append(ev.speech_handle))
    src = CallerInput(caller_pcm(seconds), 8000, heard_ms=lambda: rt.feed.fed_ms,
                      ready=rt.ready)
    run.duration_ms = src.duration_ms
    session.input.audio = src
    await asyncio.wait_for(rt.ready.wait(), 180)
    await wait_in_flight(rt, 8000)
    run.says.append((rt.mode.t_ms, session.say(SAY)))
    if interrupt_say:
        await wait_in_flight(rt, 18000)
        run.says.append((rt.mode.t_ms, session.say(SAY)))
        await until(lambda: any(d.kind == "steering" and d.detail["status"] == "started"
                                for d in rt.decisions[-20:])
                    and rt.mode.t_ms >= run.says[-1][0] + 400)
        session.interrupt()
    await src.done.wait()
    run.interrupted = [h for h in run.speeches if h.interrupted]  # close interrupts the last
    await session.aclose()
    return run


def check_turn_events(run: Run) -> None:
    rt = run.rt
    started = [d for d in rt.decisions if d.kind == "user-started"]
    stopped = [d for d in rt.decisions if d.kind == "user-stopped"]
    assert started and stopped
    states = [e.new_state for e in run.of("user_state_changed")]
    assert states.count("speaking") == len(started)
    assert states.count("listening") >= len(stopped)
    # Backchannels start no caller turn: no speech event at their onset.
    backchannels = [o for o in rt.mode.overlaps if o.verdict == "backchannel"]
    for o in backchannels:
        assert all(d.t_ms != o.onset_ms for d in started)


def check_transcripts(run: Run) -> None:
    final = [e for e in run.of("user_input_transcribed") if e.is_final]
    assert final and all(e.transcript for e in final)
    users = [e.item for e in run.of("conversation_item_added")
             if isinstance(e.item, llm.ChatMessage) and e.item.role == "user"]
    assert [u.text_content for u in users] == [e.transcript for e in final]


def check_say(run: Run, dev_words: list[str]) -> float:
    """The say's first sayable word in the agent text; returns its delay in call ms."""
    t_say = run.says[0][0]
    after = [(t, p) for t, p in run.text.pieces if t >= t_say]
    heard = "".join(p for _, p in after)
    assert dev_words[0] in heard, (heard[:400], run.rt.decisions)
    t_word = next(t for t, _ in after if dev_words[0] in "".join(
        p for tt, p in after if tt <= t))
    return t_word - t_say


def check_stream_say_interrupt(run: Run, dev_words: list[str]) -> None:
    """The default ("play") meets all three at once: the whole stream went out, the says
    cut in (the generation in flight ended for them) and interrupt stopped one at once."""
    rt = run.rt
    assert rt.between_turns == "play"
    # What interrupt() muted is dropped by design: Moshi's interrupted turn, to its end. Its
    # length is the model's (0.6 to 2.2 s in this call, by how the caller's audio lands);
    # the rest of the stream, between turns included, went out.
    stops = [d.t_ms for d in rt.decisions if d.kind == "agent-stopped"]
    muted = sum(min([t for t in stops if t >= d.t_ms] or [rt.mode.t_ms]) - d.t_ms
                for d in rt.decisions if d.kind == "interrupt")
    assert run.out.played_ms + muted >= 0.9 * run.duration_ms
    # Played + dropped is the whole call, to a frame per generation.
    assert abs(run.out.played_ms + rt.dropped_ms - rt.mode.t_ms) <= 20 * (run.out.segments + 2)
    assert any(d.kind == "make-way" for d in rt.decisions)
    delay = check_say(run, dev_words)
    assert delay <= 5000
    # No speech interrupted but the test's own interrupt(): backchannels raise none.
    assert run.interrupted == [run.says[-1][1]]
    # interrupt(): LiveKit's speech was interrupted, the steering cancelled at once.
    statuses = [d.detail["status"] for d in rt.decisions if d.kind == "steering"]
    assert statuses.count("finished") >= 1 and "cancelled" in statuses
    assert run.says[-1][1].interrupted and not run.says[0][1].interrupted
    t_int = next(d.t_ms for d in rt.decisions if d.kind == "interrupt")
    t_cancel = next(d.t_ms for d in rt.decisions if d.detail.get("status") == "cancelled")
    assert t_cancel - t_int <= 200  # the model's next step (80 ms) plus the playout


def sayable(dev_checkpoint: Any, text: str) -> list[str]:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(dev_checkpoint / "dev_tokenizer.model"))
    pieces = ("".join(sp.id_to_piece(t) for t in sp.encode(w) if t not in (0, 3))
              for w in text.split())
    return [w.replace("▁", "") for w in pieces if w.replace("▁", "")]


@pytest.mark.slow
async def test_agent_session_on_the_embedded_dev_checkpoint(dev_checkpoint: Any) -> None:
    model = RealtimeModel(moshi={"checkpoint": str(dev_checkpoint), "device": "cpu",
                                 "stt": "dev", "stall_fill_ms": 2000, **SEEDS},
                          clock="input", sample_rate=8000)
    caps = model.capabilities
    assert caps.supports_say and caps.user_transcription and caps.turn_detection
    assert caps.supports_overlapping_speech and not caps.mutable_instructions
    tools = OrderStatusAgent()
    run = await agent_call(model, CALL_S, interrupt_say=True, tools=tools)
    rt = run.rt
    assert not run.of("error")
    # The worked example: the first final caller transcript went to the tool, and what it
    # found was said (steered) before the test's own says.
    assert len(tools.calls) == 1 and tools.calls[0].said.startswith("I looked up order")
    statuses = [d.detail["status"] for d in rt.decisions if d.kind == "steering"]
    assert statuses.count("queued") == 3
    check_turn_events(run)
    check_transcripts(run)
    # One generation (one played segment) per agent turn or say; Moshi's words as text.
    turns = [d for d in rt.decisions if d.kind == "agent-started"]
    assert turns and run.out.segments >= len(turns)
    agents = [e.item for e in run.of("conversation_item_added")
              if isinstance(e.item, llm.ChatMessage) and e.item.role == "assistant"]
    assert agents and all(a.text_content for a in agents)
    check_stream_say_interrupt(run, sayable(dev_checkpoint, SAY))
    assert rt.adapter.state == "closed"  # type: ignore[attr-defined]


@pytest.fixture
async def served() -> AsyncIterator[Any]:
    pytest.importorskip("torch")
    from voice_server_moshi.engine.call_sampling import CallSampling
    from voice_server_moshi.engine.core import EngineConfig
    from voice_server_moshi.engine.models import load_models
    from voice_server_moshi.testing.serving import serving

    models = await asyncio.to_thread(load_models, "dev", device="cpu", dtype="float32",
                                     stt="dev")
    async with serving(models, EngineConfig(slots=2, sampling=CallSampling())) as srv:
        yield srv


@pytest.mark.slow
async def test_agent_session_against_serve(served: Any, dev_checkpoint: Any) -> None:
    url = f"ws://127.0.0.1:{served.port}/api/chat"
    model = RealtimeModel(moshi={"url": url, "stall_fill_ms": 2000, **SEEDS}, clock="input",
                          sample_rate=8000, user_transcription=True)
    run = await agent_call(model, CALL_S, interrupt_say=True)
    assert not run.of("error")
    check_turn_events(run)
    check_transcripts(run)
    assert run.rt.capabilities.supports_say and run.rt.capabilities.user_transcription
    check_stream_say_interrupt(run, sayable(dev_checkpoint, SAY))


async def test_the_session_refuses_what_moshi_cannot_do_with_the_reason() -> None:
    transport = ScriptedTransport(echo=True)
    model = RealtimeModel(adapter_factory=lambda: MoshiAdapter(MoshiSettings(),
                                                               transport=transport))
    rt = model.session()
    assert isinstance(rt, MoshiRealtimeSession)
    await asyncio.wait_for(rt.ready.wait(), 10)
    # A peer with no mid-call persona change (the remote transport's case) says so.
    with pytest.raises(llm.RealtimeError, match=r"takes no instructions.*NVIDIA's protocol"):
        await rt.update_instructions("You are a helpful assistant.")
    await rt.update_instructions("")  # nothing to refuse
    with pytest.raises(llm.RealtimeError, match="takes no instructions"):
        await rt.generate_reply(instructions="Say hi")
    with pytest.raises(llm.RealtimeError, match="decides by itself"):
        await rt.generate_reply()
    with pytest.raises(llm.RealtimeError, match="cannot call tools"):
        await rt.update_tools([llm.function_tool(lambda: None, name="lookup")])
    with pytest.raises(llm.RealtimeError, match="cannot call tools"):
        rt.update_options(tool_choice="required")
    with pytest.raises(llm.RealtimeError, match="no input buffer"):
        rt.commit_audio()
    with pytest.raises(llm.RealtimeError, match="truncated"):
        rt.truncate(message_id="x", modalities=["audio"], audio_end_ms=0)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="what is my balance?")
    with pytest.raises(llm.RealtimeError, match="chat context cannot be edited"):
        await rt.update_chat_ctx(ctx)
    # The scripted peer cannot be steered: say fails with the reason, loudly.
    with pytest.raises(llm.RealtimeError, match="cannot say text"):
        await rt.say("hello")
    await rt.aclose()
    assert rt.decisions[-1].kind == "disconnected"


@pytest.mark.parametrize("between_turns", ["play", "drop"])
async def test_the_session_driven_directly_maps_the_modes_decisions(
        between_turns: BetweenTurns) -> None:
    # The corpus's scripted agent on a call with a backchannel and a barge-in (the
    # Pipecat service's call), input-clocked: the decisions do not depend on the load.
    from voice_server_moshi.corpus.agent import ScriptedAgentTransport, text_schedule
    from voice_server_moshi.corpus.assemble import build_call
    from voice_server_moshi.corpus.store import bundled_clips

    call = build_call(bundled_clips(), 12, 20.0, exchanges=2)
    model = RealtimeModel(clock="input", sample_rate=8000, between_turns=between_turns,
                          adapter_factory=lambda: MoshiAdapter(
        MoshiSettings(), transport=ScriptedAgentTransport(
            call.agent, 8000, text_schedule(call.agent_segments))))
    assert not model.capabilities.supports_say and not model.capabilities.user_transcription
    rt = model.session()
    assert isinstance(rt, MoshiRealtimeSession)
    seen: list[str] = []
    gens: list[llm.GenerationCreatedEvent] = []
    rt.on("input_speech_started", lambda ev: seen.append("user-started"))
    rt.on("input_speech_stopped", lambda ev: seen.append("user-stopped"))
    rt.on("generation_created", gens.append)
    await asyncio.wait_for(rt.ready.wait(), 10)
    pcm = (np.clip(call.caller, -1, 1) * 32767).astype(np.int16).tobytes()
    for i in range(0, len(pcm), 960):  # 60 ms frames at 8 kHz: any size goes
        rt.push_audio(rtc.AudioFrame(pcm[i:i + 960], 8000, 1, len(pcm[i:i + 960]) // 2))
    await rt.aclose()
    verdicts = [o.verdict for o in rt.mode.overlaps]
    assert "backchannel" in verdicts and "barge-in" in verdicts
    # Exactly the mode's caller turns, in order; backchannels are not among them.
    assert seen == [d.kind for d in rt.decisions if d.kind in ("user-started", "user-stopped")]
    # One generation per agent turn, each one message with Moshi's words.
    turns = [d for d in rt.decisions if d.kind == "agent-started"]
    assert len(gens) == len(turns) >= 2 and not any(g.user_initiated for g in gens)
    texts = []
    for g in gens:
        async for msg in g.message_stream:
            texts.append("".join([t async for t in msg.text_stream]))
    assert texts[0].split()[0].strip(",.?!") == call.agent_segments[0].text.split()[0].strip(
        ",.?!")
    assert rt.mode.t_ms >= call.duration_ms - 20
    # "play" forwards everything from the first agent turn on; "drop" Moshi's turns only.
    # (the audio before Moshi's first turn, to a few frames, is all "play" drops)
    before_first = turns[0].t_ms + 60
    if between_turns == "play":
        assert rt.dropped_ms <= before_first
    else:
        assert rt.dropped_ms >= before_first + 1000

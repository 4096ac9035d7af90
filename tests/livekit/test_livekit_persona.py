"""The Agent's instructions as the call's persona (PersonaPlex, ADR 0125/0130): on the
embedded ``dev-personaplex`` checkpoint LiveKit's own AgentSession hands the Agent's
instructions to the plugin, which prompts the call with them, and ``update_instructions``
re-prompts it mid-call; on a Moshi checkpoint the instructions are refused with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs the 'livekit' extra")
pytest.importorskip("torch")
pytest.importorskip("moshi")

from livekit.agents import Agent, AgentSession, llm

from voice_server_moshi.engine import shared
from voice_server_moshi.livekit import RealtimeModel
from voice_server_moshi.livekit.harness import RecordingOutput
from voice_server_moshi.livekit.session import MoshiRealtimeSession

pytestmark = pytest.mark.slow

PERSONA = "You answer the phone for Acme."
TRANSFER = "You answer for Acme's billing team."


@pytest.fixture(scope="module", autouse=True)
def _engines() -> Iterator[None]:
    yield
    shared.shutdown_all()


def prompt_run(rt: MoshiRealtimeSession) -> Any:
    call = rt.adapter.transport.call  # type: ignore[attr-defined]
    assert call is not None and call.slot is not None
    return call.slot.prompt_run


async def test_agent_instructions_are_the_persona_and_update_reprompts() -> None:
    model = RealtimeModel(moshi={"checkpoint": "dev-personaplex", "device": "cpu",
                                 "voice": "NATM2"})
    assert not model.capabilities.mutable_instructions  # unknown until a call connects
    session: AgentSession = AgentSession(llm=model)
    session.output.audio = RecordingOutput()
    agent = Agent(instructions=PERSONA)
    errors: list[Any] = []
    session.on("error", errors.append)
    await asyncio.wait_for(session.start(agent=agent), 180)
    try:
        rt = agent._activity._rt_session  # type: ignore[union-attr]
        assert isinstance(rt, MoshiRealtimeSession) and rt.ready.is_set()
        assert rt.capabilities.mutable_instructions
        first = prompt_run(rt)
        assert first.done.is_set() and first.prompt.text == f"<system> {PERSONA} <system>"
        assert first.prompt.voice == "NATM2" and rt.persona == PERSONA
        await asyncio.wait_for(agent.update_instructions(TRANSFER), 120)  # a transfer
        second = prompt_run(rt)
        assert second is not first and second.done.is_set()
        assert second.prompt.text == f"<system> {TRANSFER} <system>"
        assert second.prompt.voice == "NATM2"  # the voice stays moshi.voice
        await rt.update_instructions(TRANSFER)  # the persona in force: no re-prompt
        assert prompt_run(rt) is second
        assert not errors
    finally:
        await session.aclose()


async def test_a_moshi_checkpoint_refuses_instructions_with_the_reason() -> None:
    model = RealtimeModel(moshi={"checkpoint": "dev", "device": "cpu"})
    rt = model.session()
    assert isinstance(rt, MoshiRealtimeSession)
    try:
        with pytest.raises(llm.RealtimeError, match=r"takes no instructions.*not trained "
                                                    "for personas"):
            await asyncio.wait_for(rt.update_instructions("Be brief."), 180)
        assert rt.ready.is_set() and not rt.capabilities.mutable_instructions
        await rt.update_instructions("")  # nothing to refuse
    finally:
        await rt.aclose()

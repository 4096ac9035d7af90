"""A worked LiveKit agent on Moshi that answers a tool call the way the reference host's
example does (``voice_server_moshi.host.tool_example``): Moshi has no tools, so the
caller's transcript goes to your code (here :class:`OrderStatusAgent`, standing in for an
LLM with one tool), and the tool's result is said in Moshi's voice through
``session.say`` (steering).

As a LiveKit worker (a LiveKit server and a Moshi peer; ``serve --stt dev`` gives caller
transcripts)::

    MOSHI_URL=ws://127.0.0.1:8998/api/chat python -m voice_server_moshi.livekit.example dev
"""

from __future__ import annotations

import os
from typing import Any

from livekit.agents import Agent, AgentSession, JobContext, UserInputTranscribedEvent

from .._log import get_logger
from ..host.tool_example import OrderStatusAgent
from .model import RealtimeModel

__all__ = ["answer_tool_calls", "entrypoint", "moshi_session"]

log = get_logger(__name__)


def answer_tool_calls(session: AgentSession[Any], tools: OrderStatusAgent) -> None:
    """On each final caller transcript, let ``tools`` decide; say what it found."""

    def on_transcript(ev: UserInputTranscribedEvent) -> None:
        if not ev.is_final:
            return
        text = tools.answer(ev.transcript.split())
        if text is not None:
            session.say(text)

    session.on("user_input_transcribed", on_transcript)


def moshi_session(url: str) -> AgentSession[Any]:
    model = RealtimeModel(moshi={"url": url}, user_transcription=True)
    return AgentSession(llm=model)


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = moshi_session(os.environ.get("MOSHI_URL", "ws://127.0.0.1:8998/api/chat"))
    answer_tool_calls(session, OrderStatusAgent())
    # Moshi takes no instructions; on PersonaPlex (embedded) they would be the persona.
    await session.start(agent=Agent(instructions=""), room=ctx.room)


if __name__ == "__main__":
    from livekit.agents import WorkerOptions, cli

    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint))

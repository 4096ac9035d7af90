"""What Moshi cannot take from LiveKit, refused with the reason (never a silent no-op).

Moshi (and the dev checkpoint) hears audio and says audio: it takes no text prompt, no
tools, and no text context. A PersonaPlex checkpoint on the embedded transport takes the
Agent's instructions as its persona (:func:`apply_persona`). Empty requests (an agent with
no instructions or tools, a context that holds only this call's own turns) are accepted:
there is nothing to refuse.
"""

from __future__ import annotations

from livekit.agents import llm

from ..adapter import VoiceModelAdapter
from ..errors import VoiceServerMoshiError

__all__ = ["apply_persona", "check_chat_ctx", "check_instructions", "check_tool_choice",
           "check_tools"]


def check_instructions(adapter: VoiceModelAdapter) -> None:
    """Refuse, with the reason, instructions this call cannot take as its persona: a Moshi
    checkpoint takes no text prompt, and a remote peer has no mid-call persona change."""
    reason = getattr(adapter, "persona_refusal", f"{type(adapter).__name__} takes no persona")
    if reason is not None:
        raise llm.RealtimeError(
            f"moshi: this call takes no instructions as its persona ({reason}; "
            "mutable_instructions is False): create the Agent with instructions=''",
            code="instructions_unsupported")


async def apply_persona(adapter: VoiceModelAdapter, persona: str) -> None:
    """Make ``persona`` the call's (PersonaPlex, ADR 0130): the call is re-prompted, its
    conversation so far leaves the model's context; the voice stays moshi.voice."""
    check_instructions(adapter)
    voice = getattr(getattr(adapter, "settings", None), "voice", None)
    try:
        await adapter.set_persona(persona, voice)  # type: ignore[attr-defined]
    except (ValueError, VoiceServerMoshiError) as exc:  # PersonaError: too long, ...
        raise llm.RealtimeError(f"moshi: the persona was refused: {exc}",
                                code="instructions_unsupported") from None


def check_tools(tools: list[llm.Tool]) -> None:
    if tools:
        names = ", ".join(sorted(getattr(t, "id", type(t).__name__) for t in tools))
        raise llm.RealtimeError(
            f"moshi: Moshi cannot call tools ({names}): handle the caller's transcript in "
            "your code and answer with session.say(text)", code="tools_unsupported")


def check_tool_choice(tool_choice: llm.ToolChoice | None) -> None:
    if tool_choice not in (None, "auto", "none"):
        raise llm.RealtimeError(f"moshi: tool_choice {tool_choice!r}: Moshi cannot call "
                                "tools", code="tools_unsupported")


def check_chat_ctx(current: llm.ChatContext, new: llm.ChatContext, own_ids: set[str]) -> None:
    """Accept a context whose new items are this session's own turns (its generations'
    words, its caller transcripts, as LiveKit commits them); refuse anything Moshi would
    have to read (user or system text, tool calls)."""
    known = {item.id for item in current.items} | own_ids
    foreign = []
    for item in new.items:
        if item.id in known:
            continue
        if isinstance(item, llm.ChatMessage) and item.role != "assistant":
            foreign.append(f"{item.role} message {item.id}")
        elif isinstance(item, llm.FunctionCall | llm.FunctionCallOutput):
            foreign.append(f"{item.type} {item.id}")
    if foreign:
        raise llm.RealtimeError(
            "moshi: the chat context cannot be edited: Moshi reads no text "
            f"(mutable_chat_context is False): {', '.join(foreign)}",
            code="chat_ctx_unsupported")

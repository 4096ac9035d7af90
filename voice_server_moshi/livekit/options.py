"""The LiveKit model's options and the capabilities it declares (docs/livekit.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from livekit.agents import llm

from ..adapter import VoiceModelAdapter
from ..modes.clock import Clock, ManualClock, RealClock

__all__ = ["BetweenTurns", "ModelOptions", "capabilities", "session_capabilities"]

#: What happens to Moshi's audio between agent turns (its silence, its breathing):
#: "play" (default) keeps each turn's generation open until the next agent turn starts
#: (or a say is scheduled), so the whole stream is forwarded as the Pipecat service does
#: (LiveKit then reads the agent as speaking for the whole call); "drop" forwards only
#: agent turns and says, so LiveKit's agent state follows Moshi's turns and the room plays
#: silence in between.
BetweenTurns = Literal["drop", "play"]


@dataclass(frozen=True)
class ModelOptions:
    adapter: str
    mode: str
    moshi: Mapping[str, Any] | Any | None
    full_duplex: Mapping[str, Any] | Any | None
    clock: Literal["real", "input"]
    between_turns: BetweenTurns
    sample_rate: int
    call_id: str | None

    def new_clock(self) -> Clock:
        return ManualClock() if self.clock == "input" else RealClock()


def capabilities(*, supports_say: bool, user_transcription: bool) -> llm.RealtimeCapabilities:
    """What Moshi through this plugin does (the table in docs/livekit.md)."""
    return llm.RealtimeCapabilities(
        message_truncation=False,  # Moshi's context is its audio: nothing to truncate
        turn_detection=True,  # the mode's caller turns become input_speech_started/stopped
        user_transcription=user_transcription,
        auto_tool_reply_generation=False,  # no tool calls at all
        audio_output=True,
        manual_function_calls=False,
        can_disable_turn_detection=False,
        supports_overlapping_speech=True,  # Moshi decides when to yield
        mutable_chat_context=False,
        # Known once a call connects (session_capabilities): PersonaPlex, embedded.
        mutable_instructions=False,
        mutable_tools=False,
        per_response_tool_choice=False,
        supports_say=supports_say,  # steering (ADR 0070)
    )


def session_capabilities(base: llm.RealtimeCapabilities, adapter: VoiceModelAdapter
                         ) -> llm.RealtimeCapabilities:
    """A connected session's capabilities: what its peer declared."""
    caps = adapter.capabilities
    personas = getattr(adapter, "persona_refusal", "") is None  # instructions -> persona
    return dataclasses.replace(base, supports_say=caps.steering,
                               user_transcription=caps.caller_transcript,
                               mutable_instructions=personas)

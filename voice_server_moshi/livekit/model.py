"""``voice_server_moshi.livekit.RealtimeModel``: Moshi as a LiveKit Agents realtime model.

Built exactly as the Pipecat service is: each session creates the registered ``moshi``
adapter (remote or embedded, from ``moshi={...}``) and the ``full-duplex`` mode (from
``full_duplex={...}``) through the registry, and is the mode's host (ADR 0125).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from livekit.agents import llm

from ..adapter import VoiceModelAdapter
from ..modes.clock import Clock, ManualClock, RealClock
from ..modes.feed import MODE_RATES
from ..registry import Registry, load_registry

__all__ = ["BetweenTurns", "RealtimeModel"]

#: What happens to Moshi's audio between agent turns (its silence, its breathing):
#: "drop" (default) forwards only agent turns, so LiveKit's agent state follows Moshi's
#: turns and the room plays silence in between; "play" keeps each turn's generation open
#: until the next agent turn starts, so the whole stream is forwarded as the Pipecat
#: service does (LiveKit then reads the agent as speaking for the whole call).
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


class RealtimeModel(llm.RealtimeModel):
    """Moshi for ``AgentSession(llm=voice_server_moshi.livekit.RealtimeModel(...))``.

    ``moshi`` and ``full_duplex`` are the host config's ``[moshi]`` and ``[full-duplex]``
    sections (mappings or settings dataclasses; bad keys raise ``SettingsError`` here).
    ``clock``: "real" (live calls: the mode sends silence when caller audio is late) or
    "input" (one mode step per 20 ms of caller audio received, waiting for the model:
    offline runs, tests, benchmarks). ``sample_rate``: the mode's rate, the rate of the
    agent audio it hands LiveKit (caller audio at any rate is resampled to it).
    ``supports_say`` / ``user_transcription``: what to declare before a session connects;
    by default what the adapter declares (embedded: steering yes, caller transcripts when
    ``moshi.stt`` is set), and for a remote peer ``say`` yes (``voice-server-moshi serve``
    steers; Kyutai's own server does not, and ``say`` then fails with a ``RealtimeError``
    saying so) and transcripts no (set True for ``serve --stt``). Each session then reports
    what its connected peer does.
    """

    def __init__(
        self,
        *,
        moshi: Mapping[str, Any] | Any | None = None,
        full_duplex: Mapping[str, Any] | Any | None = None,
        clock: Literal["real", "input"] = "real",
        between_turns: BetweenTurns = "drop",
        sample_rate: int = 24000,
        supports_say: bool | None = None,
        user_transcription: bool | None = None,
        adapter: str = "moshi",
        mode: str = "full-duplex",
        registry: Registry | None = None,
        adapter_factory: Callable[[], VoiceModelAdapter] | None = None,
        call_id: str | None = None,
    ) -> None:
        if clock not in ("real", "input"):
            raise ValueError(f"clock must be 'real' or 'input', got {clock!r}")
        if between_turns not in ("drop", "play"):
            raise ValueError(f"between_turns must be 'drop' or 'play', got {between_turns!r}")
        if sample_rate not in MODE_RATES:
            raise ValueError(f"sample_rate must be one of {MODE_RATES}, got {sample_rate}")
        self.registry = registry or load_registry()
        self._adapter_factory = adapter_factory
        self.options = ModelOptions(adapter, mode, moshi, full_duplex, clock, between_turns,
                                    sample_rate, call_id)
        # Settings are checked now, not when a call starts: the adapter is created (it
        # does not connect) and tells what it can do; the mode's settings are parsed.
        probe = self.new_adapter()
        reg = self.registry.modes.get(mode)
        if reg is None:
            from ..errors import UnknownNameError

            raise UnknownNameError("mode", mode, list(self.registry.modes))
        Registry._settings(reg, "mode", full_duplex)
        caps = probe.capabilities
        remote = getattr(getattr(probe, "settings", None), "resolved_transport", "") == "remote"
        say = supports_say if supports_say is not None else (remote or caps.steering)
        heard = user_transcription if user_transcription is not None else caps.caller_transcript
        super().__init__(capabilities=capabilities(supports_say=say, user_transcription=heard))

    def new_adapter(self) -> VoiceModelAdapter:
        if self._adapter_factory is not None:
            return self._adapter_factory()
        return self.registry.create_adapter(self.options.adapter, self.options.moshi)

    @property
    def model(self) -> str:
        return "moshi"

    @property
    def provider(self) -> str:
        return "voice-server-moshi"

    def session(self, *, turn_detection_disabled: bool = False) -> llm.RealtimeSession[Any]:
        # Turn detection is the mode's (caller VAD, overlap verdicts): it cannot be off,
        # and can_disable_turn_detection is False, so LiveKit never asks.
        from .session import MoshiRealtimeSession

        return MoshiRealtimeSession(self)

    async def aclose(self) -> None:
        return None  # sessions own their adapters; the model holds nothing open


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
        mutable_instructions=False,  # the dev/Moshi checkpoints take none (personas: later)
        mutable_tools=False,
        per_response_tool_choice=False,
        supports_say=supports_say,  # steering (ADR 0070)
    )


def session_capabilities(base: llm.RealtimeCapabilities, adapter: VoiceModelAdapter
                         ) -> llm.RealtimeCapabilities:
    """A connected session's capabilities: what its peer declared."""
    caps = adapter.capabilities
    return dataclasses.replace(base, supports_say=caps.steering,
                               user_transcription=caps.caller_transcript)

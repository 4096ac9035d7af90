"""``voice_server_moshi.livekit.RealtimeModel``: Moshi as a LiveKit Agents realtime model.

Built exactly as the Pipecat service is: each session creates the registered ``moshi``
adapter (remote or embedded, from ``moshi={...}``) and the ``full-duplex`` mode (from
``full_duplex={...}``) through the registry, and is the mode's host (ADR 0125).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from livekit.agents import llm

from ..adapter import VoiceModelAdapter
from ..modes.feed import MODE_RATES
from ..registry import Registry, load_registry
from .options import BetweenTurns, ModelOptions, capabilities
from .session import MoshiRealtimeSession

__all__ = ["RealtimeModel"]


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
        between_turns: BetweenTurns = "play",
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
        return MoshiRealtimeSession(self, self.options, self.registry, self.new_adapter)

    async def aclose(self) -> None:
        return None  # sessions own their adapters; the model holds nothing open

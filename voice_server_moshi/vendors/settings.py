"""Settings of the reference adapters (OpenAI Realtime, ElevenLabs Agents, Phonic STS).

Kept apart from the adapters so that the plugin can register them without importing any
transport code. Secrets (``api_key``) are ``repr=False`` and redacted by
:func:`voice_server_moshi.settings.redacted`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OpenAIWireFormat = Literal["auto", "g711", "pcm24k"]
PhonicWireFormat = Literal["auto", "mulaw_8000", "pcm_8000", "pcm_16000", "pcm_24000"]


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    if not url.startswith(schemes):
        raise ValueError(f"{name} must start with {' or '.join(schemes)}, got {url!r}")


@dataclass(frozen=True, slots=True)
class OpenAIRealtimeSettings:
    """The ``openai-realtime`` adapter (GA Realtime API over WebSocket)."""

    api_key: str = field(
        default="", repr=False,
        metadata={"help": "API key (Authorization: Bearer); never logged"},
    )
    base_url: str = field(
        default="https://api.openai.com/v1",
        metadata={"help": "REST base URL; the socket is <base_url>/realtime with http->ws"},
    )
    model: str = field(default="gpt-realtime", metadata={"help": "realtime model"})
    voice: str = field(default="marin", metadata={"help": "output voice"})
    instructions: str | None = field(default=None, metadata={"help": "system instructions"})
    wire_format: OpenAIWireFormat = field(
        default="auto",
        metadata={"help": "auto: G.711 calls use audio/pcmu|pcma (no conversion), PCM calls "
                  "audio/pcm at 24 kHz; g711: always G.711; pcm24k: always 24 kHz PCM"},
    )
    vad_threshold: float = field(
        default=0.5, metadata={"min": 0.0, "max": 1.0, "help": "server_vad threshold"}
    )
    vad_prefix_padding_ms: int = field(
        default=300, metadata={"min": 0, "max": 5000, "help": "server_vad prefix padding"}
    )
    vad_silence_duration_ms: int = field(
        default=500, metadata={"min": 0, "max": 10000, "help": "server_vad silence to end a turn"}
    )
    input_transcription_model: str | None = field(
        default="gpt-4o-mini-transcribe",
        metadata={"help": "caller transcripts (audio.input.transcription.model); null: none"},
    )
    use_client_secret: bool = field(
        default=False,
        metadata={"help": "mint an ephemeral secret (POST /realtime/client_secrets) and open "
                  "the socket with it instead of the API key"},
    )
    client_secret_ttl_s: int = field(
        default=600, metadata={"min": 10, "max": 7200, "help": "ephemeral secret lifetime"}
    )
    connect_timeout_s: float = field(
        default=10.0, metadata={"min": 0.1, "max": 600, "help": "socket open plus session.created"}
    )
    max_queued_events: int = field(
        default=500, metadata={"min": 16, "max": 100000, "help": "slow-consumer bound"}
    )

    def __post_init__(self) -> None:
        _check_url("base_url", self.base_url, ("http://", "https://"))


@dataclass(frozen=True, slots=True)
class ElevenLabsSettings:
    """The ``elevenlabs`` adapter (Agents Platform conversation WebSocket)."""

    agent_id: str = field(metadata={"help": "agent id (required)"})
    api_key: str | None = field(
        default=None, repr=False,
        metadata={"help": "xi-api-key for private agents: a signed URL is fetched with it; "
                  "null: public agent"},
    )
    base_url: str = field(
        default="https://api.elevenlabs.io",
        metadata={"help": "REST base; the socket is <base_url>/v1/convai/conversation, http->ws"},
    )
    first_message: str | None = field(
        default=None, metadata={"help": "conversation_config_override.agent.first_message"}
    )
    prompt: str | None = field(
        default=None, metadata={"help": "conversation_config_override.agent.prompt.prompt"}
    )
    user_id: str | None = field(default=None, metadata={"help": "user_id in the initiation"})
    speech_events: Literal["provider", "off"] = field(
        default="provider",
        metadata={"help": "provider: speech-started/ended derived from the agent's tentative "
                  "and final user transcripts and interruptions (see ADR 0050); off: none"},
    )
    connect_timeout_s: float = field(
        default=10.0,
        metadata={"min": 0.1, "max": 600, "help": "signed URL, socket open and metadata"},
    )
    max_queued_events: int = field(
        default=500, metadata={"min": 16, "max": 100000, "help": "slow-consumer bound"}
    )

    def __post_init__(self) -> None:
        if not self.agent_id:
            raise ValueError("agent_id is required")
        _check_url("base_url", self.base_url, ("http://", "https://"))


@dataclass(frozen=True, slots=True)
class PhonicSettings:
    """The ``phonic`` adapter (speech-to-speech WebSocket)."""

    api_key: str = field(
        default="", repr=False, metadata={"help": "Authorization: Bearer key; never logged"}
    )
    base_url: str = field(
        default="wss://api.phonic.ai",
        metadata={"help": "socket base; the adapter connects to <base_url>/v1/sts/ws"},
    )
    agent: str | None = field(default=None, metadata={"help": "saved agent name"})
    project: str | None = field(default=None, metadata={"help": "project of the agent"})
    phonic_model: str | None = field(default=None, metadata={"help": "e.g. phonic-1.1"})
    voice_id: str | None = field(default=None, metadata={"help": "voice"})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt"})
    welcome_message: str | None = field(default=None, metadata={"help": "welcome message"})
    wire_format: PhonicWireFormat = field(
        default="auto",
        metadata={"help": "auto: mulaw_8000 for µ-law calls, pcm_<rate> for PCM and A-law "
                  "calls (Phonic has no A-law)"},
    )
    stream_ahead_of_real_time: bool = field(
        default=False,
        metadata={"help": "let Phonic send agent audio faster than real time"},
    )
    emit_idle_audio: bool = field(
        default=False,
        metadata={"help": "also emit the paced silence/background audio Phonic streams "
                  "between agent turns (default: only audio inside agent speech)"},
    )
    reconnect: bool = field(
        default=True,
        metadata={"help": "resume with reconnect_conv_id after close 1006, 1012 or "
                  "1001 'restarting' (see ADR 0052)"},
    )
    reconnect_grace_s: float = field(
        default=30.0, metadata={"min": 0.0, "max": 30.0, "help": "give up resuming after this"}
    )
    connect_timeout_s: float = field(
        default=10.0, metadata={"min": 0.1, "max": 600, "help": "socket open plus ready"}
    )
    max_queued_events: int = field(
        default=500, metadata={"min": 16, "max": 100000, "help": "slow-consumer bound"}
    )

    def __post_init__(self) -> None:
        _check_url("base_url", self.base_url, ("ws://", "wss://"))

"""Settings of the ``moshi:`` config section (the Moshi adapter and its transports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_HF_REPO = "kyutai/moshiko-pytorch-bf16"
_SAMPLING_HELP = ("per-call sampling, sent as a query parameter (remote) or applied to "
                  "this call's batch row (embedded): ")


@dataclass(frozen=True, slots=True)
class MoshiSettings:
    """Every key of the ``moshi:`` section, with its default. See the README's table."""

    url: str | None = field(
        default=None,
        metadata={"help": "WebSocket URL of a Moshi server, e.g. ws://127.0.0.1:8998/api/chat; "
                  "setting it selects the remote transport"},
    )
    transport: str = field(
        default="auto",
        metadata={"help": "Moshi transport, by registered name: remote, embedded (plugins add "
                  "more through voice_server_register_moshi_transports); auto: remote when "
                  "url is set, else embedded"},
    )
    transport_settings: Mapping[str, Any] = field(
        default_factory=dict, repr=False,
        metadata={"help": "settings of a plugin's transport, a table (e.g. "
                  "[moshi.transport_settings]) parsed into the settings class it registered"},
    )
    connect_timeout_s: float = field(
        default=10.0,
        metadata={"min": 0.1, "max": 600, "help": "socket open plus handshake; a Python "
                  "moshi.server busy with another call is reported as server busy after it"},
    )
    auth_token: str | None = field(
        default=None, repr=False,
        metadata={"help": "bearer token sent as 'Authorization: Bearer ...' (remote)"},
    )
    tls_insecure: bool = field(
        default=False,
        metadata={"help": "trust a self-signed certificate (Kyutai's Rust server makes one); "
                  "an explicit opt-in, never the default"},
    )
    ca_file: str | None = field(
        default=None, metadata={"help": "PEM file of CAs to trust for wss:// (remote)"}
    )
    # Per-call sampling, Kyutai's Rust backend's query parameters (ADR 0080). None: the
    # server's or engine's default. Ranges are serve's (engine/call_sampling.py RANGES).
    text_temperature: float | None = field(
        default=None, metadata={"min": 0.0, "max": 2.0, "help": _SAMPLING_HELP + "0 is greedy"}
    )
    text_topk: int | None = field(
        default=None, metadata={"min": 1, "max": 500, "help": _SAMPLING_HELP + "text top-k"}
    )
    audio_temperature: float | None = field(
        default=None, metadata={"min": 0.0, "max": 2.0, "help": _SAMPLING_HELP + "0 is greedy"}
    )
    audio_topk: int | None = field(
        default=None, metadata={"min": 1, "max": 500, "help": _SAMPLING_HELP + "audio top-k"}
    )
    text_seed: int | None = field(
        default=None, metadata={"min": 0, "max": (1 << 64) - 1,
                                "help": _SAMPLING_HELP + "with audio_seed: reproducible calls"})
    audio_seed: int | None = field(
        default=None, metadata={"min": 0, "max": (1 << 64) - 1,
                                "help": _SAMPLING_HELP + "with text_seed: reproducible calls"})
    pad_mult: float | None = field(
        default=None, metadata={"min": -10.0, "max": 10.0,
                                "help": _SAMPLING_HELP + "> 0 quieter, < 0 chattier"})
    repetition_penalty_context: int | None = field(
        default=None, metadata={"min": 0, "max": 256,
                                "help": _SAMPLING_HELP + "text tokens the penalty looks back on"})
    repetition_penalty: float | None = field(
        default=None, metadata={"min": 1.0, "max": 3.0,
                                "help": _SAMPLING_HELP + "1.0 is off"})
    persona: str | None = field(
        default=None,
        metadata={"help": "PersonaPlex: who the agent is, e.g. 'You are the support line of "
                  "Acme; be brief' (wrapped in <system> tags unless already); sent as "
                  "text_prompt (remote) or prefilled into the call's row (embedded)"},
    )
    voice: str | None = field(
        default=None,
        metadata={"help": "PersonaPlex: the agent's voice, a name in the voice directory "
                  "(NATF0..NATF3, NATM0..NATM3, VARF0..VARF4, VARM0..VARM4) or an audio file "
                  "(.wav; embedded); sent as voice_prompt=NAME.pt (remote); unset: NATF2"},
    )
    seed: int | None = field(
        default=None, metadata={"min": 0, "max": (1 << 64) - 1,
                                "help": "PersonaPlex: NVIDIA's seed query parameter (remote); "
                                "embedded: the seed of text_seed and audio_seed when unset"})
    checkpoint: str = field(
        default="dev",
        metadata={"help": "embedded weights: 'dev' (generated tiny checkpoint, babbles), a "
                  f"local directory, or a Hugging Face repo such as {DEFAULT_HF_REPO}"},
    )
    stt: str | None = field(
        default=None,
        metadata={"help": "embedded: caller transcripts from a Kyutai streaming STT batched "
                  "beside Moshi: 'dev' (generated tiny checkpoint, babbles), a local "
                  "directory, or a Hugging Face repo such as kyutai/stt-1b-en_fr; unset: "
                  "none. Device and dtype follow the engine's"},
    )
    device: str = field(
        default="auto", metadata={"help": "embedded: cpu, cuda, cuda:N or auto"}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "embedded: auto is bfloat16 on GPU, float32 on CPU"}
    )
    slots: int = field(
        default=1, metadata={"min": 1, "max": 1024, "help": "embedded: concurrent calls per engine"}
    )
    context: int | None = field(
        default=None,
        metadata={"min": 8, "max": 100000, "help": "embedded: LM context in 80 ms steps "
                  "(memory per slot); default the checkpoint's"},
    )
    admission_wait_s: float = field(
        default=0.0,
        metadata={"min": 0.0, "max": 600, "help": "embedded: how long a call waits for a free "
                  "slot before it is refused"},
    )
    stall_fill_ms: int | None = field(
        default=100,
        metadata={"min": 20, "max": 2000, "help": "caller media gap after which silence is sent "
                  "to keep Moshi's input clock running; null: never (for a host that keeps "
                  "the media continuous itself, e.g. the full-duplex mode on a virtual clock)"},
    )
    vad: str = field(
        default="cascade",
        metadata={"help": "caller VAD, by registered name: cascade (default; level gate, "
                  "background and echo references, Silero confirming starts and ends; falls "
                  "back to energy without onnxruntime), energy, silero, or one a plugin adds "
                  "through the voice_server_register_vads hook (ADR 0085)"},
    )
    vad_settings: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={"help": "settings of a plugin's caller VAD, a table (e.g. "
                  "[moshi.vad_settings]) parsed into the settings class it registered"},
    )
    vad_threshold_db: float = field(
        default=9.0, metadata={"min": 0.0, "max": 40.0,
                               "help": "caller VAD: level over the noise floor that is speech"},
    )
    vad_hangover_ms: int = field(
        default=300, metadata={"min": 0, "max": 3000,
                               "help": "caller VAD: silence that ends speech"},
    )
    max_queued_events: int = field(
        default=500,
        metadata={"min": 16, "max": 100000, "help": "slow-consumer bound of the event queue "
                  "(500 = 10 s of 20 ms frames); oldest agent audio is dropped first"},
    )

    def __post_init__(self) -> None:
        if self.transport == "remote" and not self.url:
            raise ValueError("transport 'remote' needs url (e.g. ws://127.0.0.1:8998/api/chat)")
        if self.url is not None and not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {self.url!r}")
        from ..engine.persona import make_prompt  # pure: no torch

        make_prompt(self.persona, self.voice)  # PersonaError (a ValueError) says why

    @property
    def resolved_transport(self) -> str:
        if self.transport == "auto":
            return "remote" if self.url else "embedded"
        return self.transport

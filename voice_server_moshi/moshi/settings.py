"""Settings of the ``moshi:`` config section (the Moshi adapter and its transports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_HF_REPO = "kyutai/moshiko-pytorch-bf16"


@dataclass(frozen=True, slots=True)
class MoshiSettings:
    """Every key of the ``moshi:`` section, with its default. See the README's table."""

    url: str | None = field(
        default=None,
        metadata={"help": "WebSocket URL of a Moshi server, e.g. ws://127.0.0.1:8998/api/chat; "
                  "setting it selects the remote transport"},
    )
    transport: Literal["auto", "remote", "embedded"] = field(
        default="auto",
        metadata={"help": "auto: remote when url is set, else embedded"},
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
    text_temperature: float | None = field(
        default=None, metadata={"min": 0.0, "max": 5.0, "help": "Rust backend query parameter"}
    )
    text_topk: int | None = field(
        default=None, metadata={"min": 1, "max": 100000, "help": "Rust backend query parameter"}
    )
    audio_temperature: float | None = field(
        default=None, metadata={"min": 0.0, "max": 5.0, "help": "Rust backend query parameter"}
    )
    audio_topk: int | None = field(
        default=None, metadata={"min": 1, "max": 100000, "help": "Rust backend query parameter"}
    )
    text_seed: int | None = field(default=None, metadata={"help": "Rust backend query parameter"})
    audio_seed: int | None = field(default=None, metadata={"help": "Rust backend query parameter"})
    checkpoint: str = field(
        default="dev",
        metadata={"help": "embedded weights: 'dev' (generated tiny checkpoint, babbles), a "
                  f"local directory, or a Hugging Face repo such as {DEFAULT_HF_REPO}"},
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
    stall_fill_ms: int = field(
        default=100,
        metadata={"min": 20, "max": 2000, "help": "caller media gap after which silence is sent "
                  "to keep Moshi's input clock running"},
    )
    vad: str = field(
        default="cascade",
        metadata={"help": "caller VAD, by registered name: cascade (default; level gate, "
                  "background and echo references, Silero on candidates; falls back to "
                  "energy without onnxruntime), energy, silero, or one a plugin adds through "
                  "the voice_server_register_vads hook (ADR 0085)"},
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

    @property
    def resolved_transport(self) -> Literal["remote", "embedded"]:
        if self.transport == "auto":
            return "remote" if self.url else "embedded"
        return self.transport

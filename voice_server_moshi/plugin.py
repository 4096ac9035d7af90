"""This package's pluggy plugin, found through the ``voice_server`` entry point ``moshi``.

Factories import their modules lazily, so loading the plugin never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .hookspecs import Register, hookimpl
from .modes.settings import FullDuplexSettings
from .moshi.settings import MoshiSettings
from .vendors.settings import ElevenLabsSettings, OpenAIRealtimeSettings, PhonicSettings


def _lazy(path: str) -> Any:
    module, _, attr = path.partition(":")

    def factory(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    factory.__qualname__ = factory.__name__ = f"lazy<{path}>"
    return factory


@hookimpl
def voice_server_register_adapters(register: Register) -> None:
    register(
        "moshi",
        _lazy("voice_server_moshi.moshi.adapter:MoshiAdapter"),
        settings=MoshiSettings,
        description="Kyutai Moshi, full duplex: remote Moshi server or embedded engine",
    )
    register(
        "openai-realtime",
        _lazy("voice_server_moshi.vendors.openai_realtime:OpenAIRealtimeAdapter"),
        settings=OpenAIRealtimeSettings,
        description="OpenAI Realtime API (GA) over WebSocket, server VAD",
    )
    register(
        "elevenlabs",
        _lazy("voice_server_moshi.vendors.elevenlabs:ElevenLabsAdapter"),
        settings=ElevenLabsSettings,
        description="ElevenLabs Agents Platform conversation WebSocket",
    )
    register(
        "phonic",
        _lazy("voice_server_moshi.vendors.phonic:PhonicAdapter"),
        settings=PhonicSettings,
        description="Phonic speech-to-speech WebSocket, with session resumption",
    )


@hookimpl
def voice_server_register_modes(register: Register) -> None:
    register(
        "full-duplex",
        _lazy("voice_server_moshi.modes.full_duplex:FullDuplexMode"),
        settings=FullDuplexSettings,
        description="continuous streams in both directions behind the host's turn callbacks "
        "(kwargs: adapter, host, config=None, clock=None)",
    )


@hookimpl
def voice_server_register_vads(register: Register) -> None:
    register(
        "energy",
        _lazy("voice_server_moshi.vads:energy_vad"),
        description="frame energy over an adaptive noise floor, with hangover (ADR 0011)",
    )
    register(
        "cascade",
        _lazy("voice_server_moshi.learned_vads:cascade_vad"),
        description="level gate over noise floor, babble-adapting background and agent echo, "
        "Silero v6 (onnxruntime) confirming candidates only (ADR 0085)",
    )
    register(
        "silero",
        _lazy("voice_server_moshi.learned_vads:silero_vad"),
        description="Silero VAD v6 on every 32 ms window, onnxruntime (ADR 0085)",
    )


@hookimpl
def voice_server_register_moshi_transports(register: Register) -> None:
    register(
        "remote",
        _lazy("voice_server_moshi.moshi.transports:remote_transport"),
        description="Kyutai's /api/chat WebSocket protocol to a Moshi server (needs url)",
    )
    register(
        "embedded",
        _lazy("voice_server_moshi.moshi.transports:embedded_transport"),
        description="a slot of the in-process batched engine (the 'embedded' extra)",
    )

"""Moshi inside LiveKit Agents: ``AgentSession(llm=voice_server_moshi.livekit.RealtimeModel(
moshi={...}, full_duplex={...}))``, built on the ``moshi`` adapter and the ``full-duplex``
mode exactly as the Pipecat service is (ADR 0125, docs/livekit.md).

Needs the ``[livekit]`` extra (``livekit-agents``). Nothing outside this package imports it,
so ``import voice_server_moshi`` never pulls LiveKit in.
"""

from .model import RealtimeModel

__all__ = ["RealtimeModel"]

"""Run corpus calls through the reference host, the real Moshi adapter and the scripted agent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..audio import g711
from ..audio.wavio import to_int16
from ..host.config import HostConfig
from ..host.impair import Impairment
from ..host.reference import CallResult, ClockKind, ReferenceHost
from ..moshi.adapter import MoshiAdapter
from ..moshi.settings import MoshiSettings
from ..registry import Registry, load_registry
from .agent import ScriptedAgentTransport, text_schedule
from .assemble import CorpusCall


async def run_corpus_call(
    call: CorpusCall,
    mode_settings: Mapping[str, Any] | None = None,
    *,
    registry: Registry | None = None,
    clock: ClockKind = "virtual",
    speed: float = 1.0,
    tail_ms: float = 1000.0,
    agent: ScriptedAgentTransport | None = None,
    vad: str = "energy",
    impair: Impairment | None = None,
) -> CallResult:
    """One corpus call: caller track as 8 kHz µ-law, the call's agent script as Moshi;
    ``vad`` names the caller VAD (``[moshi] vad``); ``impair``: a bad line on the caller's
    path (:mod:`~voice_server_moshi.host.impair`)."""
    cfg = HostConfig(mode_settings=dict(mode_settings or {}))
    moshi = MoshiSettings(vad=vad)
    transport = agent or ScriptedAgentTransport(
        call.agent, 8000, text_schedule(call.agent_segments), keep_sent=False
    )
    host = ReferenceHost(
        cfg,
        registry=registry or load_registry(),
        adapter_factory=lambda: MoshiAdapter(moshi, transport=transport),
    )
    caller = g711.encode(to_int16(call.caller), cfg.audio.encoding)
    return await host.run_call(
        caller, clock=clock, speed=speed, tail_ms=tail_ms, call_id=call.call_id,
        impair=impair,
    )

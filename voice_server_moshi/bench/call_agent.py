"""The call and the agent the framework benches (``bench pipecat``, ``bench livekit``) run:
a two-exchange corpus call at 8 kHz, and an adapter on the corpus's scripted agent (cheap
and deterministic, so the figures are the paths') or the embedded dev checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from ..adapter import VoiceModelAdapter
from ..corpus.agent import ScriptedAgentTransport, text_schedule
from ..corpus.assemble import CorpusCall, build_call
from ..corpus.store import bundled_clips
from ..moshi.adapter import MoshiAdapter
from ..moshi.settings import MoshiSettings

__all__ = ["add_call_args", "bench_call"]


def bench_call(seed: int, seconds: float, agent: str
               ) -> tuple[bytes, float, Callable[[], VoiceModelAdapter]]:
    """The caller's PCM16 (8 kHz), its length (s), and a new adapter per call."""
    call: CorpusCall = build_call(bundled_clips(), seed, 20.0, exchanges=2)
    caller = call.caller[: int(8000 * seconds)]
    pcm = (np.clip(caller, -1, 1) * 32767).astype(np.int16).tobytes()

    def factory() -> VoiceModelAdapter:
        if agent == "dev":
            return MoshiAdapter(MoshiSettings(checkpoint="dev"))
        return MoshiAdapter(MoshiSettings(), transport=ScriptedAgentTransport(
            call.agent, 8000, text_schedule(call.agent_segments)))

    return pcm, len(caller) / 8000, factory


def add_call_args(p: argparse.ArgumentParser) -> None:
    """The call a framework bench plays (``bench pipecat``, ``bench livekit``)."""
    p.add_argument("--agent", choices=["scripted", "dev"], default="scripted")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the call")
    p.add_argument("--seed", type=int, default=12, help="corpus call seed (2 exchanges)")

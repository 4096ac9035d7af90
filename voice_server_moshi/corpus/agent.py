"""A deterministic agent stand-in: the scripted Moshi peer playing a corpus call's agent.

:class:`~voice_server_moshi.moshi.scripted.ScriptedTransport` with a script: every caller
frame sent yields one 80 ms frame of the agent track (silence past its end) and the text
pieces due in that frame. Plugged into the real
:class:`~voice_server_moshi.moshi.adapter.MoshiAdapter` through its ``transport=`` argument,
it makes the full-duplex path (G.711, resampling, framing, VAD, playout, turn logic)
testable with known agent speech.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..moshi.scripted import ScriptedTransport
from .assemble import Segment

__all__ = ["ScriptedAgentTransport", "text_schedule"]


def text_schedule(segments: Sequence[Segment]) -> list[tuple[float, str]]:
    """Word pieces (' word', as Moshi sends them) spread evenly over each agent segment."""
    out: list[tuple[float, str]] = []
    for seg in segments:
        words = seg.text.split()
        step = (seg.end_ms - seg.start_ms) / max(1, len(words))
        out.extend((seg.start_ms + k * step, " " + w) for k, w in enumerate(words))
    return out


#: The corpus's agent stand-in is the one scripted Moshi peer, given the call's agent track
#: and text: ``ScriptedAgentTransport(call.agent, 8000, text_schedule(call.agent_segments))``.
ScriptedAgentTransport = ScriptedTransport

"""The caller-VAD extension point: a typed ``Vad`` protocol, chosen by name in settings.

Plugins register VAD factories through the ``voice_server_register_vads`` hook, the way they
register adapters and modes::

    from voice_server_moshi.hookspecs import hookimpl

    @hookimpl
    def voice_server_register_vads(register):
        register("my-vad", make_my_vad, description="...")

and a host picks one with ``vad = "my-vad"`` in its ``[moshi]`` section. ``make_my_vad``
is a :data:`VadFactory`: called once per call with a :class:`VadConfig`, it returns a fresh
:class:`Vad` that holds that call's state (never share one between calls). A VAD registered
with ``settings=MyVadSettings`` (a settings dataclass, :mod:`voice_server_moshi.settings`)
is called as ``make_my_vad(config, settings)``, its settings parsed from the host's
``vad_settings`` table in ``[moshi]``.

A VAD consumes the caller's own audio, int16 mono at the call's PCM rate
(``VadConfig.sample_rate``: 8 kHz for G.711 calls), in chunks of any length, and returns
the speech starts and ends each chunk completes, with their **stream times**: milliseconds
of caller audio since the first sample it was given (not wall time). This package's own
VAD is ``"energy"`` (:class:`~voice_server_moshi.audio.vad.EnergyVad`, ADR 0011).

A VAD that also wants the agent's audio as an echo reference implements
:class:`AgentAudioSink` as well; the Moshi adapter feeds it the agent audio it sends to the
caller, at the same rate, with its agent stream time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from .audio.vad import EnergyVad, VadTransition

__all__ = [
    "AgentAudioSink",
    "Vad",
    "VadConfig",
    "VadFactory",
    "VadTransition",
    "energy_vad",
]


@dataclass(frozen=True, slots=True)
class VadConfig:
    """What a VAD factory is told about the call. ``threshold_db`` and ``hangover_ms`` come
    from the adapter's settings (``vad_threshold_db``, ``vad_hangover_ms``); a VAD that has
    no use for them ignores them."""

    sample_rate: int
    threshold_db: float = 9.0
    hangover_ms: int = 300
    call_id: str = ""


@runtime_checkable
class Vad(Protocol):
    """One call's caller VAD (see the module docstring)."""

    def process(self, samples: NDArray[np.int16]) -> list[VadTransition]:
        """Feed caller audio (int16, mono, call rate, any length); return the starts and
        ends it completes, in order, with ``t_ms`` in caller stream time."""
        ...


@runtime_checkable
class AgentAudioSink(Protocol):
    """Optional: a VAD that listens to the agent's outgoing audio (an echo reference)."""

    def agent_audio(self, samples: NDArray[np.int16], t_ms: float) -> None:
        """The agent audio sent to the caller (int16, call rate); ``t_ms`` is the agent
        stream time of its first sample."""
        ...


#: Makes a new :class:`Vad` for one call.
VadFactory = Callable[[VadConfig], Vad]


def energy_vad(config: VadConfig) -> Vad:
    """The ``"energy"`` VAD: frame energy over an adaptive noise floor (ADR 0011)."""
    return EnergyVad(config.sample_rate, config.threshold_db, config.hangover_ms)

"""The ``"silero"`` and ``"cascade"`` caller VADs (ADR 0085), as :data:`~.vads.VadFactory`.

Both run Silero v6 on onnxruntime (:mod:`.audio.silero`). Without onnxruntime the factories
fall back to the ``"energy"`` VAD and log why (once per process), so a host whose
settings name them still gets a working call.
"""

from __future__ import annotations

from functools import cache

from ._log import get_logger
from .audio.silero import silero_available
from .vads import Vad, VadConfig, energy_vad

__all__ = ["cascade_vad", "silero_vad"]

log = get_logger(__name__)


@cache
def _warn_fallback(name: str) -> None:
    log.warning("caller VAD falls back to energy", requested=name,
                reason="onnxruntime is not installed (pip install onnxruntime)")


def cascade_vad(config: VadConfig) -> Vad:
    """Level gate + Silero on candidates + background and echo references (the default)."""
    if not silero_available():
        _warn_fallback("cascade")
        return energy_vad(config)
    from .audio.cascade_vad import CascadeVad

    return CascadeVad(config.sample_rate, config.threshold_db, config.hangover_ms)


def silero_vad(config: VadConfig) -> Vad:
    """Silero v6 alone on every 32 ms window (VADIterator's start/end rule)."""
    if not silero_available():
        _warn_fallback("silero")
        return energy_vad(config)
    from .audio.silero_vad import SileroVad

    return SileroVad(config.sample_rate, config.hangover_ms)

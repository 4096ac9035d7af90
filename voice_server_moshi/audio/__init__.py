"""Telephony audio path: pure, I/O-free, testable with plain arrays.

G.711 (:mod:`.g711`), the streaming low-latency resampler (:mod:`.resample`), framers
(:mod:`.framing`), Ogg/Opus (:mod:`.opus`: libopus's encoder where the system has it,
sphn's otherwise; sphn's decoder) and the caller VAD (:mod:`.vad`).
The one part that touches files is :mod:`.wavio`, WAV in and out (PCM, float, G.711),
which the demo, the corpus and the engine's dev STT share.
"""

from __future__ import annotations

from . import g711
from .framing import ByteFramer, SampleFramer
from .g711 import alaw_decode, alaw_encode, decode, encode, ulaw_decode, ulaw_encode
from .opus import OpusDecoder, OpusEncoder
from .resample import Resampler
from .vad import EnergyVad, VadTransition

__all__ = [
    "ByteFramer",
    "EnergyVad",
    "OpusDecoder",
    "OpusEncoder",
    "Resampler",
    "SampleFramer",
    "VadTransition",
    "alaw_decode",
    "alaw_encode",
    "decode",
    "encode",
    "g711",
    "ulaw_decode",
    "ulaw_encode",
]

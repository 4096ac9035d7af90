"""Ogg/Opus streams over ``sphn``, wire-compatible with Kyutai's ``moshi.server``.

Kyutai's server and client use exactly ``sphn.OpusStreamWriter`` / ``OpusStreamReader`` at
24 kHz mono and send each ``append_pcm`` result as one ``0x01`` message; so do we. The
writer emits one Ogg page per encoded frame (the first carries the OpusHead/OpusTags
headers); the reader returns PCM as soon as a page's packets decode.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import sphn
from numpy.typing import NDArray

from .framing import SampleFramer
from .moshi_frame import FRAME_SAMPLES

__all__ = ["OPUS_FRAME_SAMPLES", "OpusDecoder", "OpusEncoder"]

#: What Kyutai's client sends per message: 80 ms at 24 kHz, one Moshi frame.
OPUS_FRAME_SAMPLES: Final = FRAME_SAMPLES
#: Opus frame durations (2.5 to 60 ms); 80 ms is accepted by sphn as well.
_ALLOWED_MS: Final = (2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0)


def _as_f32(pcm: object) -> NDArray[np.float32]:
    if not isinstance(pcm, np.ndarray):
        raise TypeError(f"expected a numpy float32 array, got {type(pcm).__name__}")
    if pcm.dtype != np.float32:
        raise TypeError(f"expected float32 samples, got dtype {pcm.dtype}")
    if pcm.ndim != 1:
        raise ValueError(f"expected a 1-D (mono) array, got shape {pcm.shape}")
    return pcm


class OpusEncoder:
    """float32 PCM of any chunk size -> Ogg/Opus page bytes.

    Input is buffered into frames of ``frame_samples`` (default 1920, 80 ms at 24 kHz, as
    Kyutai's client); ``encode`` returns b"" while a frame is incomplete.
    """

    def __init__(self, sample_rate: int = 24000, frame_samples: int = OPUS_FRAME_SAMPLES) -> None:
        if sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"Opus does not support sample rate {sample_rate}")
        if 1000.0 * frame_samples / sample_rate not in _ALLOWED_MS:
            raise ValueError(
                f"frame_samples {frame_samples} is not an Opus frame size at {sample_rate} Hz "
                f"(allowed durations in ms: {_ALLOWED_MS})"
            )
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self._writer: Any = sphn.OpusStreamWriter(sample_rate)
        self._framer = SampleFramer(frame_samples, np.float32)

    @property
    def pending(self) -> int:
        """Samples waiting for a whole frame."""
        return self._framer.pending

    def encode(self, pcm: NDArray[np.float32]) -> bytes:
        """Add samples; return the Ogg bytes of every frame they complete (b"" if none)."""
        frames = self._framer.push(_as_f32(pcm))
        return b"".join(bytes(self._writer.append_pcm(f)) for f in frames)


class OpusDecoder:
    """Ogg/Opus bytes, split anywhere -> float32 PCM (possibly empty)."""

    def __init__(self, sample_rate: int = 24000) -> None:
        if sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"Opus does not support sample rate {sample_rate}")
        self.sample_rate = sample_rate
        self._reader: Any = sphn.OpusStreamReader(sample_rate)

    def decode(self, data: bytes | bytearray | memoryview) -> NDArray[np.float32]:
        """Feed received bytes; return the PCM they complete."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        if not data:
            return np.zeros(0, dtype=np.float32)
        pcm = self._reader.append_bytes(bytes(data))
        return np.asarray(pcm, dtype=np.float32).reshape(-1)

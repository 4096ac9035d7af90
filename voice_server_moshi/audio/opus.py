"""Ogg/Opus streams, wire-compatible with Kyutai's ``moshi.server``.

Kyutai's server and client use ``sphn.OpusStreamWriter`` / ``OpusStreamReader`` at 24 kHz
mono and send each ``append_pcm`` result as one ``0x01`` message; so do we. Decoding is
sphn's reader, which returns PCM as soon as a page's packets decode. Encoding is the
system's libopus where there is one (:mod:`.libopus`: the same stream shape for less than
half the CPU, and the interpreter lock free meanwhile, ADR 0165), else sphn's writer.
Either way one Ogg page per 40 ms packet, the first ones carrying OpusHead and OpusTags.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import numpy as np
import sphn
from numpy.typing import NDArray

from .framing import SampleFramer
from .libopus import OPUS_RATES, LibopusEncoder, libopus_version, load_libopus
from .moshi_frame import FRAME_SAMPLES

__all__ = [
    "OPUS_FRAME_SAMPLES",
    "OpusBackend",
    "OpusDecoder",
    "OpusEncoder",
    "default_backend",
    "encoder_name",
]

#: What Kyutai's client sends per message: 80 ms at 24 kHz, one Moshi frame.
OPUS_FRAME_SAMPLES: Final = FRAME_SAMPLES
#: Opus frame durations (2.5 to 60 ms); 80 ms is accepted by sphn as well.
_ALLOWED_MS: Final = (2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0)

#: Who encodes: the system's libopus (ctypes) or sphn's writer (Kyutai's own).
OpusBackend = Literal["libopus", "sphn"]


def default_backend() -> OpusBackend:
    """``libopus`` where the system has it (see :func:`.libopus.load_libopus`), else ``sphn``."""
    return "libopus" if load_libopus() is not None else "sphn"


def encoder_name() -> str:
    """What encodes by default, for logs: ``libopus 1.3.1`` or ``sphn``."""
    return libopus_version() or "sphn"


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
    Kyutai's client); ``encode`` returns b"" while a frame is incomplete. ``backend``
    defaults to :func:`default_backend`; naming ``libopus`` where there is none raises
    :class:`.libopus.LibopusError`.
    """

    def __init__(self, sample_rate: int = 24000, frame_samples: int = OPUS_FRAME_SAMPLES,
                 *, backend: OpusBackend | None = None) -> None:
        if sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus does not support sample rate {sample_rate}")
        if 1000.0 * frame_samples / sample_rate not in _ALLOWED_MS:
            raise ValueError(
                f"frame_samples {frame_samples} is not an Opus frame size at {sample_rate} Hz "
                f"(allowed durations in ms: {_ALLOWED_MS})"
            )
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self.backend: OpusBackend = backend or default_backend()
        self._libopus: LibopusEncoder | None = None
        self._writer: Any = None
        if self.backend == "libopus":
            self._libopus = LibopusEncoder(sample_rate, frame_samples)
        elif self.backend == "sphn":
            self._writer = sphn.OpusStreamWriter(sample_rate)
        else:
            raise ValueError(f"unknown Opus backend {backend!r} (libopus or sphn)")
        self._framer = SampleFramer(frame_samples, np.float32)

    @property
    def pending(self) -> int:
        """Samples waiting for a whole frame."""
        return self._framer.pending

    def encode(self, pcm: NDArray[np.float32]) -> bytes:
        """Add samples; return the Ogg bytes of every frame they complete (b"" if none)."""
        frames = self._framer.push(_as_f32(pcm))
        if self._libopus is not None:
            return b"".join(self._libopus.encode(f) for f in frames)
        return b"".join(bytes(self._writer.append_pcm(f)) for f in frames)


class OpusDecoder:
    """Ogg/Opus bytes, split anywhere -> float32 PCM (possibly empty)."""

    def __init__(self, sample_rate: int = 24000) -> None:
        if sample_rate not in OPUS_RATES:
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

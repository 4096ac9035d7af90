"""Audio plumbing shared by the reference adapters: transcoding and output re-framing.

A vendor speaks one wire format (G.711 or PCM16 at some rate); the host's call has its own
:class:`~voice_server_moshi.formats.AudioFormat`. :class:`Transcoder` converts a stream
between the two (pass-through when they match, which is the common telephony case), and
:class:`OutputFramer` cuts agent audio into whole frames of the call's frame size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import g711
from ..audio.resample import Resampler
from ..formats import AudioFormat, Encoding

_SILENCE_BYTE = {"pcm16": 0x00, "mulaw": 0xFF, "alaw": 0xD5}


@dataclass(frozen=True, slots=True)
class WireFormat:
    """An audio stream's encoding and rate (no framing)."""

    encoding: Encoding
    sample_rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def duration_ms(self, nbytes: int) -> float:
        return 1000.0 * nbytes / self.bytes_per_sample / self.sample_rate

    def __str__(self) -> str:
        return f"{self.encoding} at {self.sample_rate} Hz"

    @classmethod
    def of(cls, fmt: AudioFormat) -> WireFormat:
        return cls(fmt.encoding, fmt.sample_rate)


class Transcoder:
    """Streaming conversion from ``src`` to ``dst`` (G.711/PCM decode, resample, encode).

    Holds back an odd trailing byte of PCM16 so that chunk boundaries never split a sample.
    """

    def __init__(self, src: WireFormat, dst: WireFormat) -> None:
        self.src = src
        self.dst = dst
        self.passthrough = src == dst
        self._carry = b""
        self._resampler = (
            Resampler(src.sample_rate, dst.sample_rate)
            if src.sample_rate != dst.sample_rate
            else None
        )

    def process(self, data: bytes) -> bytes:
        if self.passthrough:
            return data
        data = self._carry + data
        cut = len(data) - len(data) % self.src.bytes_per_sample
        data, self._carry = data[:cut], data[cut:]
        if not data:
            return b""
        pcm = g711.decode(data, self.src.encoding)
        if self._resampler is not None:
            pcm = self._resampler.process(pcm).astype(np.int16, copy=False)
        return g711.encode(pcm, self.dst.encoding)

    def flush(self) -> bytes:
        """Whatever the resampler still holds (end of a stream or of an agent turn)."""
        self._carry = b""
        if self._resampler is None:
            return b""
        tail = self._resampler.flush().astype(np.int16, copy=False)
        return g711.encode(tail, self.dst.encoding) if len(tail) else b""


class OutputFramer:
    """Cuts agent audio (already in the call's encoding) into whole frames of ``fmt``."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self.frame_bytes = fmt.bytes_per_frame
        self._buf = bytearray()
        self._silence = _SILENCE_BYTE[fmt.encoding]

    @property
    def pending(self) -> int:
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        n = len(self._buf) // self.frame_bytes
        frames = [
            bytes(self._buf[i * self.frame_bytes : (i + 1) * self.frame_bytes]) for i in range(n)
        ]
        del self._buf[: n * self.frame_bytes]
        return frames

    def flush_padded(self) -> bytes | None:
        """The held partial frame padded with encoded silence, or None when nothing is held.

        Used at the end of an agent turn so the turn's last words reach the caller.
        """
        if not self._buf:
            return None
        frame = bytes(self._buf) + bytes([self._silence]) * (self.frame_bytes - len(self._buf))
        self._buf.clear()
        return frame

    def clear(self) -> int:
        """Drop the held partial frame (barge-in); return how many bytes were dropped."""
        n = len(self._buf)
        self._buf.clear()
        return n

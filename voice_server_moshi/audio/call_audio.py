"""One call's audio path, for every adapter: the call's wire format <-> the model's audio.

The host's call has its :class:`~voice_server_moshi.formats.AudioFormat` (G.711 or PCM16,
usually 8 kHz, 20 ms frames); a model takes either bytes in a wire format of its own
(the vendor adapters: :class:`Transcoder`, pass-through when the formats match, and
:class:`OutputFramer` for whole call frames out) or float PCM in fixed frames at its rate
(Moshi: :class:`CallAudio`, 80 ms at 24 kHz). Either way each chunk is decoded once,
converted between int16 and float once, resampled by one streaming resampler per
direction and framed once; :class:`CallAudio` also hands back the caller's int16 PCM at the
call's rate, for the caller VAD, so nothing decodes the caller's audio a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..formats import AudioFormat, Encoding
from . import g711
from .framing import SampleFramer
from .resample import Resampler

__all__ = ["CallAudio", "OutputFramer", "Transcoder", "WireFormat", "to_float", "to_int16"]


def to_float(pcm: NDArray[np.int16]) -> NDArray[np.float32]:
    """int16 -> float32 in [-1, 1)."""
    return pcm.astype(np.float32) / np.float32(32768.0)


def to_int16(x: NDArray[Any]) -> NDArray[np.int16]:
    """float in [-1, 1] -> int16, rounded and clipped."""
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)

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


class CallAudio:
    """A call's audio to and from a model that takes float PCM frames at its own rate.

    Caller side: :meth:`decode` turns a chunk of the call's bytes into int16 PCM at the
    call's rate (what the VAD hears); :meth:`to_model` takes that PCM (or a length of
    silence) to float, resamples it and returns the whole model frames it completes.
    Agent side: :meth:`from_model` takes model PCM and returns whole call frames, each as
    the call's bytes and its int16 PCM (for a VAD's echo reference or a level).
    """

    def __init__(self, call: AudioFormat, model_rate: int, model_frame_samples: int) -> None:
        self.call = call
        self.model_rate = model_rate
        self._in_resampler = Resampler(call.sample_rate, model_rate)
        self._in_framer = SampleFramer(model_frame_samples, np.float32)
        self._out_resampler = Resampler(model_rate, call.sample_rate)
        self._out_framer = SampleFramer(call.samples_per_frame, np.int16)

    def decode(self, chunk: bytes) -> NDArray[np.int16]:
        """The call's bytes (whole samples) as int16 PCM at the call's rate."""
        return g711.decode(chunk, self.call.encoding)

    def ms(self, samples: int) -> float:
        """Duration of ``samples`` at the call's rate."""
        return 1000.0 * samples / self.call.sample_rate

    def to_model(self, pcm: NDArray[np.int16]) -> list[NDArray[np.float32]]:
        """Caller PCM (call rate) -> the model frames it completes."""
        return self._frames_in(to_float(pcm))

    def silence_to_model(self, samples: int) -> list[NDArray[np.float32]]:
        """``samples`` of silence at the call's rate (a media gap filled) -> model frames."""
        return self._frames_in(np.zeros(samples, dtype=np.float32))

    def _frames_in(self, x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        up = self._in_resampler.process(x)
        return self._in_framer.push(np.asarray(up, dtype=np.float32))

    def from_model(self, pcm: NDArray[np.float32]) -> list[tuple[bytes, NDArray[np.int16]]]:
        """Model PCM (model rate, float) -> whole call frames: (bytes, int16 PCM)."""
        down = self._out_resampler.process(np.asarray(pcm, dtype=np.float32))
        return [(g711.encode(frame, self.call.encoding), frame)
                for frame in self._out_framer.push(to_int16(down))]

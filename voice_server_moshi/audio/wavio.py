"""WAV in and out with the standard library: PCM through ``wave``, G.711 by hand.

``wave`` reads only integer PCM (format tag 1); telephony recordings are often µ-law (7)
or A-law (6) WAVs, and some tools write 32-bit float (3), so those formats are parsed from
the RIFF chunks here. Anything else gets an error that says what was found.
"""

from __future__ import annotations

import struct
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import g711

_PCM, _FLOAT, _ALAW, _MULAW, _EXTENSIBLE = 1, 3, 6, 7, 0xFFFE


class WavError(ValueError):
    """The file is not a WAV this reader understands; the message says why."""


@dataclass(frozen=True, slots=True)
class WavAudio:
    samples: npt.NDArray[np.float32]  # (frames, channels), in [-1, 1]
    sample_rate: int
    encoding: str  # pcm8/pcm16/pcm24/pcm32/float32/mulaw/alaw

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    def mono(self) -> npt.NDArray[np.float32]:
        mono: npt.NDArray[np.float32] = self.samples.mean(axis=1).astype(np.float32)
        return mono


def read_wav(path: str | Path) -> WavAudio:
    """Read a WAV file: PCM 8/16/24/32-bit, 32-bit float, µ-law or A-law; any rate."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise WavError(f"cannot read {p}: {exc.strerror or exc}") from exc
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(f"{p} is not a WAV file (no RIFF/WAVE header)")
    fmt, body = _chunks(p, data)
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    if channels < 1 or rate < 1:
        raise WavError(f"{p}: bad header ({channels} channels at {rate} Hz)")
    if tag == _PCM:
        return _read_pcm(p, rate, channels)
    usable = len(body) - len(body) % max(block_align, 1)
    body = body[:usable]
    if tag in (_MULAW, _ALAW):
        if bits != 8:
            raise WavError(f"{p}: G.711 WAV with {bits}-bit samples; expected 8")
        enc = "mulaw" if tag == _MULAW else "alaw"
        pcm = g711.decode(body, enc).astype(np.float32) / 32768.0
        return WavAudio(pcm.reshape(-1, channels), rate, enc)
    if tag == _FLOAT and bits == 32:
        pcm = np.frombuffer(body, dtype="<f4").astype(np.float32)
        return WavAudio(np.clip(pcm, -1, 1).reshape(-1, channels), rate, "float32")
    raise WavError(
        f"{p}: unsupported WAV format tag {tag} ({bits}-bit); supported: PCM 8/16/24/32-bit, "
        "32-bit float, µ-law, A-law"
    )


def _chunks(p: Path, data: bytes) -> tuple[bytes, bytes]:
    fmt: bytes | None = None
    body: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunk = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt = chunk
        elif cid == b"data":
            body = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise WavError(f"{p}: WAV has no valid 'fmt ' chunk")
    if body is None:
        raise WavError(f"{p}: WAV has no 'data' chunk")
    return fmt, body


def _read_pcm(p: Path, rate: int, channels: int) -> WavAudio:
    try:
        with wave.open(str(p), "rb") as w:
            width = w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{p}: unreadable PCM WAV: {exc}") from exc
    raw = raw[: len(raw) - len(raw) % (width * channels)]
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2**31).astype(np.float32)
    else:
        raise WavError(f"{p}: unsupported PCM sample width {width * 8} bits")
    return WavAudio(x.reshape(-1, channels), rate, f"pcm{width * 8}")


def to_int16(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int16]:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def write_wav_pcm16(path: str | Path, pcm: npt.NDArray[np.generic], rate: int) -> None:
    """Write int16 or float samples, shape (frames,) or (frames, channels), as PCM16."""
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        arr = to_int16(arr.astype(np.float32))
    channels = 1 if arr.ndim == 1 else int(arr.shape[1])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(arr.astype("<i2").tobytes())


def write_wav_g711(path: str | Path, data: bytes, encoding: str, rate: int = 8000) -> None:
    """Write G.711 bytes (mono) as a µ-law (7) or A-law (6) WAV with a 'fact' chunk."""
    tag = {"mulaw": _MULAW, "alaw": _ALAW}[encoding]
    fmt = struct.pack("<HHIIHHH", tag, 1, rate, rate, 1, 8, 0)
    fact = struct.pack("<I", len(data))
    pad = b"\0" if len(data) & 1 else b""
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"fact" + struct.pack("<I", 4) + fact
        + b"data" + struct.pack("<I", len(data)) + data + pad
    )
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)

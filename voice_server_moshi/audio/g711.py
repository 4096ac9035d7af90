"""G.711 µ-law and A-law, vectorised with lookup tables.

Bit-exact with ITU-T G.711 as implemented by the classic Sun reference code (the code that
CPython's ``audioop`` uses): µ-law works on the top 14 bits of a 16-bit sample, A-law on the
top 13. Encoding is one ``take`` from a 65536-entry table indexed by the sample's bit
pattern; decoding is one ``take`` from a 256-entry table.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ENCODINGS",
    "alaw_decode",
    "alaw_encode",
    "decode",
    "encode",
    "ulaw_decode",
    "ulaw_encode",
]

ENCODINGS: Final = ("pcm16", "mulaw", "alaw")

_SEG_MASK = 0x70
_SEG_SHIFT = 4
_QUANT_MASK = 0x0F
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # magnitude clip in the 14-bit domain


def _build_ulaw_decode() -> NDArray[np.int16]:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = ((u & _QUANT_MASK) << 3) + _ULAW_BIAS
    t = t << ((u & _SEG_MASK) >> _SEG_SHIFT)
    out = np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS)
    return out.astype(np.int16)


def _build_alaw_decode() -> NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & _QUANT_MASK) << 4
    seg = (a & _SEG_MASK) >> _SEG_SHIFT
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg >= 2, t << np.maximum(seg - 1, 0), t)
    out = np.where(a & 0x80, t, -t)
    return out.astype(np.int16)


def _segment(mag: NDArray[np.int32], seg_end: list[int]) -> NDArray[np.int32]:
    """Index of the first segment whose end is >= mag (8 when beyond the last)."""
    return np.searchsorted(np.asarray(seg_end, dtype=np.int32), mag, side="left").astype(np.int32)


def _build_ulaw_encode() -> NDArray[np.uint8]:
    # Table index is the int16 bit pattern read as uint16, so view int16 -> index directly.
    pcm: NDArray[np.int32] = np.arange(-32768, 32768, dtype=np.int32)
    pcm = np.roll(pcm, -32768) >> 2  # index = uint16 bit pattern; 14-bit, arithmetic shift
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(mag, [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    uval = (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & _QUANT_MASK)
    uval = np.where(seg >= 8, 0x7F, uval)
    out: NDArray[np.uint8] = ((uval ^ mask) & 0xFF).astype(np.uint8)
    return out


def _build_alaw_encode() -> NDArray[np.uint8]:
    pcm: NDArray[np.int32] = np.arange(-32768, 32768, dtype=np.int32)
    pcm = np.roll(pcm, -32768) >> 3  # index = uint16 bit pattern; 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    aval = (seg << _SEG_SHIFT) | ((mag >> shift) & _QUANT_MASK)
    aval = np.where(seg >= 8, 0x7F, aval)
    out: NDArray[np.uint8] = ((aval ^ mask) & 0xFF).astype(np.uint8)
    return out


_ULAW_DEC: Final = _build_ulaw_decode()
_ALAW_DEC: Final = _build_alaw_decode()
_ULAW_ENC: Final = _build_ulaw_encode()
_ALAW_ENC: Final = _build_alaw_encode()


def _check_pcm(pcm: NDArray[np.int16]) -> NDArray[np.uint16]:
    if not isinstance(pcm, np.ndarray):
        raise TypeError(f"expected a numpy int16 array, got {type(pcm).__name__}")
    if pcm.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got dtype {pcm.dtype}")
    if pcm.ndim != 1:
        raise ValueError(f"expected a 1-D (mono) array, got shape {pcm.shape}")
    return np.ascontiguousarray(pcm).view(np.uint16)


def _as_codes(data: bytes | bytearray | memoryview) -> NDArray[np.uint8]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    return np.frombuffer(data, dtype=np.uint8)


def ulaw_encode(pcm: NDArray[np.int16]) -> bytes:
    """int16 samples -> µ-law bytes."""
    return _ULAW_ENC.take(_check_pcm(pcm)).tobytes()


def alaw_encode(pcm: NDArray[np.int16]) -> bytes:
    """int16 samples -> A-law bytes."""
    return _ALAW_ENC.take(_check_pcm(pcm)).tobytes()


def ulaw_decode(data: bytes | bytearray | memoryview) -> NDArray[np.int16]:
    """µ-law bytes -> int16 samples."""
    return _ULAW_DEC.take(_as_codes(data))


def alaw_decode(data: bytes | bytearray | memoryview) -> NDArray[np.int16]:
    """A-law bytes -> int16 samples."""
    return _ALAW_DEC.take(_as_codes(data))


def decode(data: bytes | bytearray | memoryview, encoding: str) -> NDArray[np.int16]:
    """Wire bytes in ``encoding`` ("pcm16" little-endian, "mulaw", "alaw") -> int16 samples.

    Always returns a fresh, writable array.
    """
    if encoding == "mulaw":
        return ulaw_decode(data)
    if encoding == "alaw":
        return alaw_decode(data)
    if encoding == "pcm16":
        codes = _as_codes(data)
        if codes.size % 2:
            raise ValueError(f"pcm16 data must be an even number of bytes, got {codes.size}")
        return codes.view("<i2").astype(np.int16)
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {list(ENCODINGS)}")


def encode(pcm: NDArray[np.int16], encoding: str) -> bytes:
    """int16 samples -> wire bytes in ``encoding`` ("pcm16" little-endian, "mulaw", "alaw")."""
    if encoding == "mulaw":
        return ulaw_encode(pcm)
    if encoding == "alaw":
        return alaw_encode(pcm)
    if encoding == "pcm16":
        _check_pcm(pcm)
        return pcm.astype("<i2", copy=False).tobytes()
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {list(ENCODINGS)}")

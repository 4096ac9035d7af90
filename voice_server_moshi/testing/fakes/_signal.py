"""Signal helpers of the fake peers: tone synthesis, G.711 and caller-speech detection.

Written independently of :mod:`voice_server_moshi.audio` on purpose: a fake that shared the
adapter's codec could not catch the adapter's codec bugs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

WireEncoding = Literal["pcm16", "mulaw", "alaw"]


def _mulaw_table() -> NDArray[np.int16]:
    # ITU-T G.711 µ-law expansion, straight from the formula.
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign, -mag, mag).astype(np.int16)


def _alaw_table() -> NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    mag = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign, mag, -mag).astype(np.int16)


_DECODE = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}


def decode(data: bytes, encoding: WireEncoding) -> NDArray[np.int16]:
    if encoding == "pcm16":
        return np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2").astype(np.int16)
    return _DECODE[encoding][np.frombuffer(data, dtype=np.uint8)]


def encode(pcm: NDArray[np.int16], encoding: WireEncoding) -> bytes:
    if encoding == "pcm16":
        return pcm.astype("<i2").tobytes()
    # Nearest code by value: exact for values the table holds, close enough for a test tone.
    table = _DECODE[encoding].astype(np.int32)
    # Among equal values the higher code wins: µ-law zero is 0xFF, as G.711 encoders emit.
    order = np.lexsort((-np.arange(256), table))
    sorted_vals = table[order]
    idx = np.clip(np.searchsorted(sorted_vals, pcm.astype(np.int32)), 1, len(sorted_vals) - 1)
    left, right = sorted_vals[idx - 1], sorted_vals[idx]
    pick = np.where(np.abs(pcm - left) <= np.abs(right - pcm), idx - 1, idx)
    out: bytes = order[pick].astype(np.uint8).tobytes()
    return out


def tone(ms: float, rate: int, *, freq: float = 440.0, amplitude: int = 8000,
         start_sample: int = 0) -> NDArray[np.int16]:
    """``ms`` of a sine tone, phase-continuous from ``start_sample``."""
    n = round(rate * ms / 1000)
    t = (np.arange(n) + start_sample) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(ms: float, rate: int, encoding: WireEncoding) -> bytes:
    return encode(np.zeros(round(rate * ms / 1000), dtype=np.int16), encoding)


@dataclass
class SpeechDetector:
    """Energy detector on caller audio, timed in caller stream ms (not wall clock).

    Speech starts after ``min_speech_ms`` of 10 ms blocks over ``threshold_rms``; it stops
    after ``silence_ms`` below it. ``feed`` returns ``("start"|"stop", stream_ms)`` pairs.
    """

    rate: int
    threshold_rms: float = 600.0
    min_speech_ms: int = 40
    silence_ms: int = 300
    stream_ms: float = 0.0
    speaking: bool = False
    _pending: NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    _run_ms: float = 0.0
    _run_start: float = 0.0

    def feed(self, pcm: NDArray[np.int16]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        buf = np.concatenate((self._pending, pcm))
        block = self.rate // 100
        n = len(buf) // block
        for i in range(n):
            x = buf[i * block : (i + 1) * block].astype(np.float64)
            loud = float(np.sqrt(np.mean(x * x))) > self.threshold_rms
            if loud != self.speaking:
                if self._run_ms == 0.0:
                    self._run_start = self.stream_ms
                self._run_ms += 10.0
                need = self.min_speech_ms if loud else self.silence_ms
                if self._run_ms >= need:
                    self.speaking = loud
                    out.append(("start" if loud else "stop", self._run_start))
                    self._run_ms = 0.0
            else:
                self._run_ms = 0.0
            self.stream_ms += 10.0
        self._pending = buf[n * block :]
        return out

"""Re-chunking of audio streams into fixed-size frames (e.g. 20 ms <-> 80 ms).

Accounting: after pushing ``n`` samples (bytes) in total, over any chunking, exactly
``n // frame`` frames have been returned and ``pending == n % frame``; concatenated, the
frames plus the pending remainder are the input, in order, with nothing lost or repeated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = ["ByteFramer", "SampleFramer"]


class SampleFramer:
    """Collects 1-D sample arrays of any length into frames of ``frame_samples``.

    Every frame returned is a new array that the caller owns.
    """

    def __init__(self, frame_samples: int, dtype: DTypeLike = np.float32) -> None:
        if not isinstance(frame_samples, int) or frame_samples <= 0:
            raise ValueError(f"frame_samples must be a positive int, got {frame_samples!r}")
        self.frame_samples = frame_samples
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        self._buf: NDArray[Any] = np.zeros(frame_samples, dtype=self.dtype)
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples held that do not make a whole frame yet."""
        return self._fill

    def push(self, samples: NDArray[Any]) -> list[NDArray[Any]]:
        """Add samples; return the frames they complete (possibly none)."""
        if not isinstance(samples, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(samples).__name__}")
        if samples.dtype != self.dtype:
            raise TypeError(f"expected dtype {self.dtype}, got {samples.dtype}")
        if samples.ndim != 1:
            raise ValueError(f"expected a 1-D (mono) array, got shape {samples.shape}")
        n, size = len(samples), self.frame_samples
        frames: list[NDArray[Any]] = []
        i = 0
        if self._fill:
            take = min(size - self._fill, n)
            self._buf[self._fill : self._fill + take] = samples[:take]
            self._fill += take
            i = take
            if self._fill < size:
                return frames
            frames.append(self._buf.copy())
            self._fill = 0
        whole = (n - i) // size
        if whole:
            block = samples[i : i + whole * size].reshape(whole, size).copy()
            frames.extend(block)
            i += whole * size
        rest = n - i
        if rest:
            self._buf[:rest] = samples[i:]
            self._fill = rest
        return frames

    def flush(self, pad: bool = True) -> NDArray[Any] | None:
        """Return what is pending (zero-padded to a whole frame if ``pad``), or None."""
        if not self._fill:
            return None
        out = self._buf.copy() if pad else self._buf[: self._fill].copy()
        if pad:
            out[self._fill :] = 0
        self._fill = 0
        return out


class ByteFramer:
    """Collects byte strings of any length into frames of ``frame_bytes`` bytes."""

    def __init__(self, frame_bytes: int) -> None:
        if not isinstance(frame_bytes, int) or frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be a positive int, got {frame_bytes!r}")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buf)

    def push(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes; return the frames they complete (possibly none)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        self._buf += data
        size = self.frame_bytes
        whole = len(self._buf) // size
        if not whole:
            return []
        frames = [bytes(self._buf[j * size : (j + 1) * size]) for j in range(whole)]
        del self._buf[: whole * size]
        return frames

    def flush(self, pad: bool = True, fill: int = 0) -> bytes | None:
        """Return what is pending (padded with byte ``fill`` to a whole frame if ``pad``),
        or None. For µ-law silence pass ``fill=0xFF``, for A-law ``0xD5``."""
        if not self._buf:
            return None
        out = bytes(self._buf)
        self._buf.clear()
        if pad:
            out += bytes([fill]) * (self.frame_bytes - len(out))
        return out

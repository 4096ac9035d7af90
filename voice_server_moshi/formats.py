"""Audio formats of a call: what the host sends and expects back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["pcm16", "mulaw", "alaw"]

_BYTES_PER_SAMPLE: dict[str, int] = {"pcm16": 2, "mulaw": 1, "alaw": 1}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The call's audio format.

    ``pcm16`` is signed 16-bit little-endian mono; ``mulaw``/``alaw`` are G.711, one byte a
    sample. ``frame_ms`` is the size of the frames the host sends and receives.
    """

    encoding: Encoding = "pcm16"
    sample_rate: int = 8000
    frame_ms: int = 20

    def __post_init__(self) -> None:
        if self.encoding not in _BYTES_PER_SAMPLE:
            raise ValueError(
                f"unknown audio encoding {self.encoding!r}; expected one of "
                f"{sorted(_BYTES_PER_SAMPLE)}"
            )
        if self.encoding in ("mulaw", "alaw") and self.sample_rate != 8000:
            raise ValueError(f"G.711 ({self.encoding}) is 8000 Hz only, got {self.sample_rate}")
        if self.sample_rate not in (8000, 16000, 24000, 48000):
            raise ValueError(
                f"unsupported sample rate {self.sample_rate}; expected 8000, 16000, 24000 or 48000"
            )
        if self.frame_ms not in (10, 20, 30, 40, 60, 80):
            raise ValueError(f"unsupported frame_ms {self.frame_ms}; expected 10 to 80 in steps")

    @property
    def bytes_per_sample(self) -> int:
        return _BYTES_PER_SAMPLE[self.encoding]

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def bytes_per_frame(self) -> int:
        return self.samples_per_frame * self.bytes_per_sample

    def duration_ms(self, nbytes: int) -> float:
        """Duration of ``nbytes`` of audio in this format, in milliseconds."""
        return 1000.0 * nbytes / self.bytes_per_sample / self.sample_rate

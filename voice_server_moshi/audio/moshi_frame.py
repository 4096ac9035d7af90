"""Moshi's audio frame, defined once: 24 kHz mono, 80 ms (1920 samples) per model step
(Mimi's frame rate of 12.5 Hz). Every module that cuts, sends or checks Moshi audio
imports these (no torch)."""

from __future__ import annotations

from typing import Final

#: Moshi's (and Mimi's) sample rate.
SAMPLE_RATE: Final = 24000
#: Samples in one 80 ms frame at 24 kHz, Mimi's frame.
FRAME_SAMPLES: Final = 1920
#: Seconds per frame (one engine tick).
FRAME_S: Final = FRAME_SAMPLES / SAMPLE_RATE

"""The caller's media: a WAV file (any rate, channels, PCM or G.711) to the call's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..audio import g711
from ..audio.resample import SUPPORTED_RATES, Resampler
from ..audio.wavio import WavAudio, read_wav, to_int16
from ..formats import AudioFormat


def to_rate(x: npt.NDArray[np.float32], rate: int, target: int) -> npt.NDArray[np.float32]:
    """Resample mono float audio. The project's streaming Resampler handles the telephony
    rates; other rates (44.1 kHz, 22.05 kHz...) go through soxr, offline, once per file."""
    if rate == target:
        return x
    if rate in SUPPORTED_RATES:
        rs = Resampler(rate, target)
        y = np.concatenate([rs.process(x.astype(np.float32)), rs.flush()])
        # Drop the filter's group delay so the caller's timeline is unchanged.
        delay = round(rs.latency_ms * target / 1000.0)
        out: npt.NDArray[np.float32] = y[delay : delay + int(len(x) * target / rate)]
        return out.astype(np.float32)
    import soxr

    res: npt.NDArray[np.float32] = soxr.resample(x, rate, target).astype(np.float32)
    return res


def load_caller(path: str | Path, fmt: AudioFormat) -> tuple[bytes, WavAudio]:
    """Read ``path`` and return the call-format bytes (mono, ``fmt`` rate and encoding)."""
    wav = read_wav(path)
    if wav.samples.shape[0] == 0:
        raise ValueError(f"{path}: the WAV holds no audio")
    pcm = to_rate(wav.mono(), wav.sample_rate, fmt.sample_rate)
    return g711.encode(to_int16(pcm), fmt.encoding), wav


def decode_call_audio(data: bytes, fmt: AudioFormat) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = g711.decode(data, fmt.encoding).astype(np.float32) / 32768.0
    return out

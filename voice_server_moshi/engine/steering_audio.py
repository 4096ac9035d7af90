"""Host audio for say-audio: 24 kHz PCM -> the agent's Mimi codes (ADR 0070).

The engine's Mimi is in batched streaming mode (one state per call), so the host's clip is
encoded by a private copy of it, made once per engine on first use (the weights are shared
by value: about 0.3 GB for full-size Mimi in float32) and run off the tick thread. The
clip is encoded whole (not streamed): the codes are what Mimi's encoder makes of that
audio, and the engine's own streaming decoder voices them for the caller.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from ..audio.moshi_frame import FRAME_SAMPLES
from .steering import MAX_AUDIO_FRAMES, SteeringError

if TYPE_CHECKING:
    from .core import Engine

FRAME = FRAME_SAMPLES
#: A frame is voiced when its RMS is within this many dB of the clip's loudest frame.
VOICED_DB = 30.0


@dataclass(frozen=True, slots=True)
class EncodedClip:
    codes: npt.NDArray[np.int64]  # [dep_q, N]
    #: Frames [start, end) holding speech (where the clip's words are laid out).
    voiced: tuple[int, int]


def voiced_span(pcm: npt.NDArray[np.float32], frames: int) -> tuple[int, int]:
    """First and past-last frame whose level is within VOICED_DB of the loudest."""
    x = np.zeros(frames * FRAME, dtype=np.float32)
    x[: len(pcm)] = pcm
    rms = np.sqrt(np.mean(x.reshape(frames, FRAME).astype(np.float64) ** 2, axis=1))
    top = float(rms.max())
    if top <= 1e-6:
        return 0, frames
    on = np.flatnonzero(rms >= top * 10 ** (-VOICED_DB / 20))
    return int(on[0]), int(on[-1]) + 1


def check_pcm(pcm: Any) -> npt.NDArray[np.float32]:
    arr = np.asarray(pcm)
    if arr.ndim != 1 or arr.size == 0:
        raise SteeringError(f"say-audio takes mono 24 kHz PCM (1-D, non-empty), got {arr.shape}")
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) / 32768.0
    elif not np.issubdtype(arr.dtype, np.floating):
        raise SteeringError(f"say-audio PCM must be int16 or float, got {arr.dtype}")
    if arr.size > MAX_AUDIO_FRAMES * FRAME:
        raise SteeringError(f"say-audio clip of {arr.size / 24000:.1f} s is over the "
                            f"{MAX_AUDIO_FRAMES * FRAME / 24000:.0f} s limit")
    out: npt.NDArray[np.float32] = np.clip(
        np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    return out


class ClipEncoder:
    """Encodes host clips with a private copy of an engine's Mimi. Thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._mimi: Any = None
        self._lock = threading.Lock()

    def _model(self) -> Any:
        if self._mimi is None:
            eng = self._engine
            # Copy without the batched streaming state (the tick thread owns that): detach
            # it for the instant of the copy, under the tick lock.
            with eng._tick_lock:
                state = eng.mimi.get_streaming_state()
                eng.mimi._stop_streaming()
                try:
                    clone = copy.deepcopy(eng.mimi)
                finally:
                    eng.mimi.set_streaming_state(state)
            self._mimi = clone
        return self._mimi

    def encode(self, pcm: Any) -> EncodedClip:
        """24 kHz mono PCM (float in [-1, 1] or int16) -> codes ``[dep_q, N]``, N frames of
        80 ms (the last one zero-padded)."""
        x = check_pcm(pcm)
        n = -(-x.size // FRAME)
        with self._lock, torch.no_grad():
            mimi = self._model()
            buf = np.zeros(n * FRAME, dtype=np.float32)
            buf[: x.size] = x
            t = torch.from_numpy(buf).to(self._engine.device)[None, None]
            codes = mimi.encode(t)[0].cpu().numpy().astype(np.int64)
        dep_q = self._engine.steering_spec.dep_q
        if codes.shape[0] < dep_q:
            raise SteeringError(f"Mimi gives {codes.shape[0]} codebooks, the LM needs {dep_q}")
        return EncodedClip(codes[:dep_q, :n], voiced_span(x, n))


_encoders: weakref.WeakKeyDictionary[Engine, ClipEncoder] = weakref.WeakKeyDictionary()
_encoders_lock = threading.Lock()


def clip_encoder(engine: Engine) -> ClipEncoder:
    """The engine's clip encoder, made on first use."""
    with _encoders_lock:
        enc = _encoders.get(engine)
        if enc is None:
            enc = _encoders[engine] = ClipEncoder(engine)
        return enc

"""Silero VAD v6 speech probability at 8 kHz, on onnxruntime and numpy (no torch).

The ONNX model ships in this package (``data/silero_vad/``, MIT licence, from the
``silero-vad`` 6.2.3 wheel; see the ``LICENSE`` and ``README.md`` there). Silero's own Python
code imports torch, so this module drives the model itself, as its ``OnnxWrapper`` does:
windows of 256 samples (32 ms) at 8 kHz, each preceded by the last 32 samples of the one
before (the "context"), and a (2, 1, 128) recurrent state carried from window to window.
One :class:`SileroProb` per call holds that call's state; the inference session (weights,
read-only) is shared by every call in the process. ``onnxruntime`` is an optional
dependency (the ``silero`` extra); :func:`silero_available` says whether it imports.
"""

from __future__ import annotations

import importlib
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..bundled import data_path

__all__ = ["MODEL_FILE", "WINDOW", "SileroProb", "SileroUnavailableError", "silero_available"]

#: Samples per model window at 8 kHz (32 ms), and the context prepended to each.
WINDOW = 256
CONTEXT = 32
RATE = 8000
#: The model ``silero_vad.load_silero_vad(onnx=True)`` loads (8 and 16 kHz in one graph).
MODEL_FILE = "silero_vad.onnx"

F32 = NDArray[np.float32]


class SileroUnavailableError(RuntimeError):
    """onnxruntime is not installed (or the model cannot be loaded)."""


def model_path(name: str = MODEL_FILE) -> Path:
    return data_path("silero_vad", name)


def silero_available() -> bool:
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


_lock = threading.Lock()


@cache
def _session(name: str) -> Any:
    try:
        ort: Any = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise SileroUnavailableError(
            "the Silero VAD needs onnxruntime: pip install 'voice-server-moshi[silero]' "
            f"(or onnxruntime); {exc}"
        ) from None
    opts = ort.SessionOptions()
    # One thread per inference: calls run side by side, each window is tiny.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the export's unused initialisers are not worth a warning
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path(name)), opts, providers=["CPUExecutionProvider"])


class SileroProb:
    """Streaming speech probability: ``push`` 8 kHz float audio, get one p per 32 ms window."""

    def __init__(self, model: str = MODEL_FILE) -> None:
        with _lock:  # the cached session is built once even if calls open together
            self._sess = _session(model)
        self._sr = np.array(RATE, dtype=np.int64)
        self._buf: F32 = np.zeros(CONTEXT, dtype=np.float32)  # context + pending samples
        self.windows = 0
        self.reset()

    def reset(self) -> None:
        self._state: F32 = np.zeros((2, 1, 128), dtype=np.float32)
        self._buf = np.zeros(CONTEXT, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples buffered towards the next window."""
        return len(self._buf) - CONTEXT

    def push(self, x: F32) -> list[float]:
        """Append samples (float32, full scale 1.0); run the model on every full window."""
        self._buf = np.concatenate((self._buf, np.asarray(x, dtype=np.float32)))
        out: list[float] = []
        while len(self._buf) >= CONTEXT + WINDOW:
            out.append(self._run(self._buf[: CONTEXT + WINDOW]))
            self._buf = self._buf[WINDOW:]
        return out

    def reset_state(self) -> None:
        """Zero the recurrent state (a fresh stream), keeping buffered samples."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)

    def run(self, window: F32) -> float:
        """One step of the model on ``CONTEXT + WINDOW`` samples (context first), carrying
        the state: for callers that pick the windows themselves (a gated cascade)."""
        if window.shape != (CONTEXT + WINDOW,):
            raise ValueError(f"expected {CONTEXT + WINDOW} samples, got {window.shape}")
        return self._run(np.asarray(window, dtype=np.float32))

    def _run(self, window: F32) -> float:
        out, state = self._sess.run(
            None, {"input": window[None, :], "state": self._state, "sr": self._sr}
        )
        self._state = state
        self.windows += 1
        return float(out[0, 0])

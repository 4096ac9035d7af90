"""Where the files bundled with the package (its ``data/`` package data) are on disk.

One place for the layout, so the engine (the dev STT listens to the corpus's caller clips),
the caller VAD (Silero's model) and the corpus tools find the same files without importing
one another.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_babble_dir", "bundled_clip_dir", "data_path"]


def data_path(*parts: str) -> Path:
    """A path under the package's ``data/`` directory."""
    node = resources.files("voice_server_moshi") / "data"
    for part in parts:
        node = node / part
    return Path(str(node))


def bundled_clip_dir() -> Path:
    """The committed corpus clips: caller turns ``u*.wav``, agent turns ``a*.wav``."""
    return data_path("corpus", "clips")


def bundled_babble_dir() -> Path:
    """The committed babble recordings (background talkers) of the noisy corpus."""
    return data_path("corpus", "babble")

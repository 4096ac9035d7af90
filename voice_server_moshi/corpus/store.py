"""The committed corpus: clips bundled in the package, so tests need neither espeak nor sox."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from .clips import Clip, load_clips


def bundled_clip_dir() -> Path:
    return Path(str(resources.files("voice_server_moshi") / "data" / "corpus" / "clips"))


@lru_cache(maxsize=1)
def bundled_clips() -> dict[str, Clip]:
    return load_clips(bundled_clip_dir())

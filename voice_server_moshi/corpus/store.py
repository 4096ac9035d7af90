"""The committed corpus: clips bundled in the package, so tests need neither espeak nor sox."""

from __future__ import annotations

from functools import lru_cache

from ..bundled import bundled_clip_dir
from .clips import Clip, load_clips

__all__ = ["bundled_clips"]


@lru_cache(maxsize=1)
def bundled_clips() -> dict[str, Clip]:
    return load_clips(bundled_clip_dir())

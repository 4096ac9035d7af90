"""One call's persona prompt on its way into its row (ADR 0130): what the slot carries and
:class:`~.persona_engine.PersonaPrefill` advances."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from .persona import PersonaPrompt
from .persona_cache import PromptKey
from .persona_prompt import PromptStep


@dataclass
class PromptRun:
    """One call's prompt: its cache key, its steps (empty when restored from the cache),
    progress, and who waits for it."""

    key: PromptKey
    prompt: PersonaPrompt
    steps: list[PromptStep] = field(default_factory=list)
    pos: int = 0
    started: bool = False
    cached: bool = False
    lm_seconds: float = 0.0
    opened_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=list)

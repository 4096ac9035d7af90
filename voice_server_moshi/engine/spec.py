"""What an engine loads and how it runs, from flags or settings: the one place that builds
an engine (``serve``, ``serve --ingress-workers`` and every cluster replica).

Torch-free until :meth:`EngineSpec.build`: the cluster pickles a spec to its replicas.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._log import get_logger
from .call_sampling import GREEDY
from .config import DEFAULT_TRIM_AFTER_MS, EngineConfig, trim_window_ticks
from .persona import PersonaError
from .persona_flags import WarmPersona, warm_personas_from_args, warm_prompts

if TYPE_CHECKING:
    from .core import Engine

__all__ = ["EngineSpec"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """An engine's flags (``serve``'s and ``cluster``'s engine options)."""

    checkpoint: str = "dev"
    device: str = "cpu"
    dtype: str = "auto"
    context: int | None = None
    #: An STT batched beside Moshi for caller transcripts (0x50-0x53); None: none.
    stt: str | None = None
    slots: int = 4
    queue_frames: int = 4
    fill_after_ticks: int | None = None
    #: ``--trim-after-ms``: a standing backlog this old is trimmed; 0 never trims.
    trim_after_ms: float = DEFAULT_TRIM_AFTER_MS
    greedy: bool = False
    max_queued_outputs: int = 150
    #: PersonaPlex (ADR 0130): the voice directory (None: the checkpoint's), the prompt
    #: cache's bound, and the personas prefilled before serving ((text, voice) pairs).
    voices: str | None = None
    prompt_cache_bytes: int = 2 << 30
    warm_personas: tuple[WarmPersona, ...] = ()
    #: Bumped to roll every replica (a redeploy) without any other change.
    generation: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineSpec:
        """From a command line with the engine flags (``serve``, ``cluster``)."""
        fill = (None if args.fill_after_ms is None
                else max(0, math.ceil(args.fill_after_ms / 80.0)))
        return cls(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                   context=args.context, stt=getattr(args, "stt", None), slots=args.slots,
                   queue_frames=args.queue_frames, fill_after_ticks=fill,
                   trim_after_ms=args.trim_after_ms, greedy=args.greedy,
                   voices=getattr(args, "voices", None),
                   prompt_cache_bytes=getattr(args, "prompt_cache_bytes", 2 << 30),
                   warm_personas=warm_personas_from_args(args))

    def engine_config(self, *, target_frames: int = 1) -> EngineConfig:
        """``target_frames``: the standing input queue that is jitter, not a stall (one
        frame for ``serve``, as ``EngineConfig``'s default: a client that keeps one frame
        ahead is not trimmed; two hops deliver with more jitter: the cluster uses 2;
        ADR 0065)."""
        return EngineConfig(slots=self.slots, queue_frames=self.queue_frames,
                            fill_after_ticks=self.fill_after_ticks, target_frames=target_frames,
                            trim_window_ticks=trim_window_ticks(self.trim_after_ms),
                            sampling=GREEDY if self.greedy else None,
                            prompt_cache_bytes=self.prompt_cache_bytes)

    def build(self, *, target_frames: int = 1) -> Engine:
        """Load the models and make the engine (not started). Needs the embedded extra."""
        from .core import Engine
        from .models import load_models

        config = self.engine_config(target_frames=target_frames)  # bad flags fail first
        prompts = warm_prompts(self.warm_personas)
        models = load_models(self.checkpoint, device=self.device, dtype=self.dtype,
                             context=self.context, stt=self.stt, voices=self.voices)
        engine = Engine(models, config)
        for prompt in prompts:  # PersonaError (a ValueError) for one the model cannot take
            try:
                seconds = engine.warm(prompt)
            except PersonaError as exc:
                raise PersonaError(f"cannot warm persona {prompt.text!r} (voice "
                                   f"{prompt.voice or 'default'}): {exc}") from None
            log.info("persona warmed", voice=prompt.voice, seconds=round(seconds, 3))
        return engine

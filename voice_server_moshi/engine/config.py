"""The engine's settings and the frame it works in (no torch: the server and the embedded
adapter read these without loading a model)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..audio.moshi_frame import FRAME_S, FRAME_SAMPLES
from .call_sampling import CallSampling

__all__ = ["DEFAULT_TRIM_AFTER_MS", "FRAME_SAMPLES", "TICK_S", "EngineConfig",
           "trim_window_ticks"]

#: One engine tick: one Mimi frame.
TICK_S = FRAME_S


@dataclass(frozen=True, slots=True)
class EngineConfig:
    slots: int = 1
    #: Per-slot input queue bound in 80 ms frames; more drops the oldest (overrun).
    queue_frames: int = 4
    #: Starved ticks in a row before silence is fed (underrun); None: idle forever
    #: (input-clocked, like Kyutai's server).
    fill_after_ticks: int | None = 3
    #: Ticks of silence run through every slot before the first call (captures CUDA graphs).
    warmup_ticks: int = 4
    tick_s: float = TICK_S
    #: Every call's sampling unless the call sets its own (``GREEDY``: deterministic);
    #: None: the checkpoint's ``lm_gen_config`` over Kyutai's defaults.
    sampling: CallSampling | None = None
    #: torch.compile of moshi's hot functions; None: on for CUDA, off for CPU.
    torch_compile: bool | None = None
    #: On CPU, torch's intra-op threads (process-wide). 1 by default: on a shared machine
    #: more threads made ticks stall for seconds (OpenMP spinning against other
    #: processes), see ADR 0030. None leaves torch's setting alone. Ignored on GPU.
    cpu_threads: int | None = 1
    #: Each call samples with its own temperature, top-k, pad bias, repetition penalty and
    #: seeds (ADR 0080); False: LMGen's one batch-wide setting (``sampling``) for all.
    per_call_sampling: bool = True
    #: Backlog trimming (ADR 0065): when a call's queue held more than ``target_frames``
    #: + 1 at every tick of the last ``trim_window_ticks`` (a stall left a standing
    #: backlog, not jitter; one frame over is a caller whose frames land near the tick),
    #: the oldest frames over that are dropped (counted as trimmed), so latency returns
    #: within a frame of its baseline within about a second. None: never trim. A sender
    #: that the embedded transport is pacing (faster than real time) is never trimmed.
    target_frames: int = 1
    trim_window_ticks: int | None = 12
    #: Bound of the persona prompt cache (PersonaPlex, ADR 0130), bytes; 0 keeps none.
    prompt_cache_bytes: int = 2 << 30
    #: Step only the live calls' rows (ADR 0135): calls are kept in the first rows and a
    #: tick steps that prefix (on GPU the next power-of-two width, each with its own CUDA
    #: graphs). False: every tick steps every slot, the fixed batch of ADR 0030.
    live_rows_only: bool = True
    #: When the tick thread starts, freeze the objects alive then (the models, the
    #: imports) out of the garbage collector's reach: a full collection otherwise holds
    #: the interpreter lock for longer than a tick (ADR 0150). Process-wide.
    freeze_heap: bool = True
    #: On glibc, keep freed memory for the next tick (``mallopt``: mmap threshold 32 MiB,
    #: trim threshold 256 MiB) instead of mapping each tick's large tensors afresh, which
    #: costs page faults every tick (ADR 0150). Process-wide; glibc's own MALLOC_*
    #: variables win.
    hold_freed_memory: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 1024:
            raise ValueError(f"slots must be in 1..1024, got {self.slots}")
        if self.queue_frames < 1:
            raise ValueError(f"queue_frames must be >= 1, got {self.queue_frames}")
        if self.fill_after_ticks is not None and self.fill_after_ticks < 0:
            raise ValueError(f"fill_after_ticks must be >= 0 or None, got {self.fill_after_ticks}")
        if self.warmup_ticks < 0:
            raise ValueError(f"warmup_ticks must be >= 0, got {self.warmup_ticks}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        if not 0 <= self.target_frames < self.queue_frames:
            raise ValueError(f"target_frames must be in 0..queue_frames-1, got "
                             f"{self.target_frames}")
        if self.trim_window_ticks is not None and self.trim_window_ticks < 1:
            raise ValueError(f"trim_window_ticks must be >= 1 or None, got "
                             f"{self.trim_window_ticks}")
        if self.prompt_cache_bytes < 0:
            raise ValueError(f"prompt_cache_bytes must be >= 0, got {self.prompt_cache_bytes}")
        if not 0.001 <= self.tick_s <= 10:
            raise ValueError(f"tick_s must be in [0.001, 10], got {self.tick_s}")


#: ``--trim-after-ms``'s default: :attr:`EngineConfig.trim_window_ticks`'s 12 ticks.
DEFAULT_TRIM_AFTER_MS = 960.0


def trim_window_ticks(trim_after_ms: float) -> int | None:
    """``--trim-after-ms`` as :attr:`EngineConfig.trim_window_ticks`: 0 (or less) never
    trims; otherwise whole 80 ms ticks, at least one."""
    if trim_after_ms <= 0:
        return None
    return max(1, math.ceil(trim_after_ms / 80.0))

"""Process-wide engines: one per (checkpoint, device, dtype, context, sampling).

Loading a model takes seconds and gigabytes, so every embedded call of a process with the
same model settings shares one engine, created lazily by the first call (off the event
loop) and ticking in its own thread until the process ends or :func:`shutdown_all`.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from dataclasses import dataclass

from .._log import get_logger
from .call_sampling import CallSampling
from .config import EngineConfig
from .core import Engine
from .models import load_models

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EngineKey:
    checkpoint: str
    device: str
    dtype: str
    context: int | None
    sampling: CallSampling | None
    #: Caller-transcript STT checkpoint (ADR 0075); None: none.
    stt: str | None = None
    #: PersonaPlex voice files loaded beside the checkpoint's voices (ADR 0130).
    voices: tuple[str, ...] = ()


_engines: dict[EngineKey, Engine] = {}
_creating: dict[EngineKey, threading.Lock] = {}
_table_lock = threading.Lock()


def get_engine_blocking(key: EngineKey, slots: int, *, start: bool = True) -> Engine:
    """The engine for ``key``, created (and started) on first use. Blocking: seconds on the
    first call. ``slots`` applies only when this call creates the engine."""
    with _table_lock:
        eng = _engines.get(key)
        if eng is not None:
            if eng.slots != slots:
                log.info("shared engine exists with another slot count; using it",
                         asked=slots, slots=eng.slots)
            return eng
        lock = _creating.setdefault(key, threading.Lock())
    with lock:  # one loader per key; others wait for it
        with _table_lock:
            eng = _engines.get(key)
        if eng is not None:
            return eng
        models = load_models(key.checkpoint, device=key.device, dtype=key.dtype,
                             context=key.context, stt=key.stt, extra_voices=key.voices)
        eng = Engine(models, EngineConfig(slots=slots, sampling=key.sampling))
        if start:
            eng.start()
        with _table_lock:
            _engines[key] = eng
            _creating.pop(key, None)
        log.info("shared engine created", checkpoint=key.checkpoint, slots=slots,
                 device=str(eng.device))
        return eng


async def get_engine(key: EngineKey, slots: int) -> Engine:
    """:func:`get_engine_blocking` off the event loop."""
    with _table_lock:
        eng = _engines.get(key)
    if eng is not None:
        return eng
    return await asyncio.to_thread(get_engine_blocking, key, slots)


def shutdown_all(reason: str = "engine shut down") -> None:
    """Stop every shared engine (their calls get an error). For tests and process exit."""
    with _table_lock:
        engines = list(_engines.values())
        _engines.clear()
    for eng in engines:
        eng.stop(reason)


# A tick thread still inside torch when the interpreter tears down can abort the process
# ("terminate called without an active exception", exit -6) after the work is done: stop
# every shared engine first.
atexit.register(shutdown_all, "process exit")

"""Keep freed memory for the next tick instead of handing it back to the OS (glibc).

A tick allocates and frees the same large tensors every 80 ms (Mimi's activations, the
LM's logits: megabytes each with 16 rows). glibc serves allocations above its mmap
threshold with a fresh ``mmap`` and returns them with ``munmap``; that threshold starts at
128 KiB and moves with what the process freed before, so one process pays page faults and
page zeroing on every tick and another does not. Measured on `serve --slots 16` with 16
calls on the 2-core VM: a 40-41 ms tick at glibc's defaults, 34-36 ms with both thresholds
raised, 46-49 ms with only one of them set (ADR 0150). Setting both also turns off glibc's
dynamic adjustment, so every engine process behaves alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "hold_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's ceiling for ``M_MMAP_THRESHOLD`` on 64-bit systems (larger values are refused).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory kept at the top of a heap before it is given back to the OS.
TRIM_THRESHOLD_BYTES = 256 << 20
#: Operator settings that win over ours (glibc's environment variables).
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_lock = threading.Lock()
_result: bool | None = None


def hold_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return
    the first result). Does nothing, and returns False, where the C library has no
    ``mallopt`` (musl, macOS) or the operator set glibc's malloc variables themselves."""
    global _result
    with _lock:
        if _result is None:
            _result = _apply()
        return _result


def _apply() -> bool:
    if (any(os.environ.get(name) for name in _OPERATOR_SETTINGS)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return False

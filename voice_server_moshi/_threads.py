"""Thread helpers shared by the engine and the cluster."""

from __future__ import annotations

import contextlib

__all__ = ["name_os_thread"]


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux ``prctl(PR_SET_NAME)``, 15 bytes), so its
    CPU shows per thread in ``/proc`` (the benches read it); Python before 3.14 leaves every
    thread called ``python``. Best effort."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)

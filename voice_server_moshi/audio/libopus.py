"""Ogg/Opus pages from the system's libopus through ctypes: cheaper than sphn, and the
interpreter lock is free while it encodes (ADR 0165).

``serve`` encodes every call's agent audio on its event loop, and sphn's encoder (what
Kyutai's server uses) cost about 1.0 ms of CPU per 80 ms of speech, holding the interpreter
lock all the while, so the tick thread waited behind it. This encoder writes the same
stream shape as sphn (24 kHz mono, one 40 ms packet per Ogg page, ``OpusHead`` and
``OpusTags`` first, serial 42) with libopus's VoIP mode at complexity 5 and 40 kbit/s,
which scored the same PESQ as sphn's defaults for 0.55 ms per 80 ms. ``ctypes.CDLL``
releases the lock for each foreign call, so the encode itself overlaps the tick.

Linux only: ``opus_encoder_ctl`` is variadic, and ctypes passes variadic arguments the
way the C ABI expects on x86-64 and aarch64 Linux, not on Apple's arm64.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
import sys
import weakref
from typing import Final

import numpy as np
from numpy.typing import NDArray

from .ogg_pages import page

__all__ = [
    "BITRATE_BPS",
    "COMPLEXITY",
    "LIBOPUS_ENV",
    "OPUS_RATES",
    "LibopusEncoder",
    "LibopusError",
    "libopus_version",
    "load_libopus",
]

#: Where to find libopus (a path), or ``off`` to encode through sphn.
LIBOPUS_ENV: Final = "VOICE_SERVER_MOSHI_LIBOPUS"
#: Encoder settings (ADR 0165): PESQ equal to sphn's defaults at less than half the CPU.
COMPLEXITY: Final = 5
BITRATE_BPS: Final = 40_000
#: sphn's packet length and stream serial: the same stream shape as Kyutai's server.
PACKET_MS: Final = 40
SERIAL: Final = 42

_OPUS_APPLICATION_VOIP: Final = 2048
_OPUS_SET_BITRATE: Final = 4002
_OPUS_SET_COMPLEXITY: Final = 4010
_OPUS_GET_LOOKAHEAD: Final = 4027
#: Largest packet libopus writes (RFC 6716: 1275 bytes a frame, 3 frames), rounded up.
_MAX_PACKET: Final = 4000
#: The sample rates Opus takes (RFC 6716).
OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)


class LibopusError(RuntimeError):
    """libopus could not be loaded as configured, or refused a request."""


@functools.cache
def load_libopus() -> ctypes.CDLL | None:
    """The system's libopus with its signatures declared, or None where there is none.

    ``VOICE_SERVER_MOSHI_LIBOPUS`` names the library's path (an operator who set it gets
    a :class:`LibopusError` when it does not load, never a silent fallback) or ``off``.
    """
    wanted = os.environ.get(LIBOPUS_ENV, "").strip()
    if wanted.lower() in ("off", "0", "no", "sphn"):
        return None
    if wanted:
        try:
            return _declare(ctypes.CDLL(wanted))
        except (OSError, AttributeError) as exc:
            raise LibopusError(f"{LIBOPUS_ENV}={wanted!r} is not a usable libopus: {exc}") from exc
    if not sys.platform.startswith("linux"):
        return None
    # The soname first: dlopen finds it without find_library's ldconfig subprocess.
    for name in ("libopus.so.0", ctypes.util.find_library("opus")):
        if not name:
            continue
        try:
            return _declare(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_get_version_string.argtypes = []
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int)]
    lib.opus_encoder_destroy.restype = None
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encode_float.restype = ctypes.c_int32
    lib.opus_encode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                      ctypes.c_void_p, ctypes.c_int32]
    lib.opus_encoder_ctl.restype = ctypes.c_int  # variadic: no argtypes
    return lib


def libopus_version() -> str | None:
    """libopus's version string (``libopus 1.3.1``), or None when it is not in use."""
    lib = load_libopus()
    return None if lib is None else str(lib.opus_get_version_string().decode())


class LibopusEncoder:
    """Whole frames of float32 PCM -> Ogg/Opus page bytes, sphn's stream shape.

    ``frame_samples`` is what each :meth:`encode` call takes (the caller frames it); it
    is cut into 40 ms packets where it is a multiple of 40 ms, else sent as one packet
    (an Opus frame size, 2.5 to 60 ms). Not for two threads at once: libopus's state is
    not locked, and the interpreter lock is released while it encodes.
    """

    def __init__(self, sample_rate: int = 24000, frame_samples: int = 1920) -> None:
        lib = load_libopus()
        if lib is None:
            raise LibopusError("libopus is not available (apt-get install libopus0)")
        if sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus does not support sample rate {sample_rate}")
        packet = sample_rate * PACKET_MS // 1000
        self._packet = packet if frame_samples % packet == 0 else frame_samples
        self._lib = lib
        self._rate = sample_rate
        err = ctypes.c_int(0)
        state = lib.opus_encoder_create(sample_rate, 1, _OPUS_APPLICATION_VOIP, ctypes.byref(err))
        if err.value != 0 or not state:
            raise LibopusError(f"opus_encoder_create: {self._strerror(err.value)}")
        self._state = ctypes.c_void_p(state)
        weakref.finalize(self, lib.opus_encoder_destroy, self._state)
        settings = ((_OPUS_SET_COMPLEXITY, COMPLEXITY), (_OPUS_SET_BITRATE, BITRATE_BPS))
        for request, value in settings:
            rc = lib.opus_encoder_ctl(self._state, ctypes.c_int(request), ctypes.c_int(value))
            if rc != 0:
                raise LibopusError(f"opus_encoder_ctl({request}, {value}): {self._strerror(rc)}")
        lookahead = ctypes.c_int32(0)
        lib.opus_encoder_ctl(self._state, ctypes.c_int(_OPUS_GET_LOOKAHEAD),
                             ctypes.byref(lookahead))
        self._out = ctypes.create_string_buffer(_MAX_PACKET)
        self._granule = 0
        self._seq = 0
        self._headers = self._header_pages(lookahead.value * 48000 // sample_rate)

    def _strerror(self, code: int) -> str:
        return f"{self._lib.opus_strerror(code).decode()} ({code})"

    def _page(self, packet: bytes, htype: int = 0) -> bytes:
        out = page([packet], serial=SERIAL, seq=self._seq, granule=self._granule, htype=htype)
        self._seq += 1
        return out

    def _header_pages(self, pre_skip: int) -> bytes:
        # RFC 7845: OpusHead (beginning of stream) and OpusTags, each alone on a page.
        head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, pre_skip, self._rate, 0, 0)
        vendor = (libopus_version() or "libopus").encode()
        tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
        return self._page(head, htype=2) + self._page(tags)

    def encode(self, frame: NDArray[np.float32]) -> bytes:
        """The pages for one frame (C-contiguous float32, a multiple of the packet)."""
        if len(frame) % self._packet:
            raise ValueError(f"{len(frame)} samples are not whole {self._packet}-sample packets")
        frame = np.ascontiguousarray(frame, dtype=np.float32)
        out = [self._headers] if self._headers else []
        self._headers = b""
        for start in range(0, len(frame), self._packet):
            chunk = frame[start:start + self._packet]
            n = self._lib.opus_encode_float(self._state, chunk.ctypes.data, self._packet,
                                            self._out, _MAX_PACKET)
            if n < 0:
                raise LibopusError(f"opus_encode_float: {self._strerror(n)}")
            self._granule += self._packet * 48000 // self._rate
            out.append(self._page(self._out.raw[:n]))
        return b"".join(out)

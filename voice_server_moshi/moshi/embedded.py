"""The embedded transport: a call runs in a slot of the in-process batched engine.

All embedded calls of a process with the same model settings (checkpoint, device, dtype,
context, sampling) share one engine (:mod:`voice_server_moshi.engine.shared`), created by
the first call with ``slots`` from its settings. Needs the ``embedded`` extra (torch,
moshi); this module imports them only when a transport opens.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np

from .._log import get_logger
from ..errors import ConnectError, ServerBusyError
from .settings import MoshiSettings
from .transport import (
    MOSHI_FRAME_SAMPLES,
    PCM,
    AgentAudio,
    AgentText,
    MoshiTransport,
    PeerClosed,
    PeerError,
    TransportEvent,
)

if TYPE_CHECKING:
    from ..engine.config import Sampling
    from ..engine.session import EngineCall

__all__ = ["EmbeddedTransport"]

log = get_logger(__name__)


def _sampling(settings: MoshiSettings) -> Sampling | None:
    from ..engine.config import Sampling

    vals = (settings.text_temperature, settings.text_topk, settings.audio_temperature,
            settings.audio_topk)
    if all(v is None for v in vals):
        return None  # the checkpoint's own defaults
    d = Sampling()
    return Sampling(
        use_sampling=True,  # a temperature of 0 is greedy for its stream (moshi's rule)
        temp=d.temp if settings.audio_temperature is None else settings.audio_temperature,
        temp_text=d.temp_text if settings.text_temperature is None else settings.text_temperature,
        top_k=d.top_k if settings.audio_topk is None else settings.audio_topk,
        top_k_text=d.top_k_text if settings.text_topk is None else settings.text_topk,
    )


class EmbeddedTransport(MoshiTransport):
    """One call in the process-wide batched engine for ``settings``."""

    def __init__(self, settings: MoshiSettings) -> None:
        self.settings = settings
        self.call: EngineCall | None = None
        self.session_id: str | None = None
        self._closed = False
        self.log = log

    async def open(self, call_id: str) -> str:
        if self.call is not None:
            raise ConnectError("open() called twice on one EmbeddedTransport")
        self.log = log.bind(call_id=call_id)
        try:
            from ..engine.session import EngineCall
            from ..engine.shared import EngineKey, get_engine
        except ImportError as exc:
            raise ConnectError(
                "the embedded transport needs the 'embedded' extra "
                f"(pip install 'voice-server-moshi[embedded]'): {exc}"
            ) from None
        s = self.settings
        key = EngineKey(s.checkpoint, s.device, s.dtype, s.context, _sampling(s))
        try:
            engine = await get_engine(key, s.slots)
        except Exception as exc:  # any loader failure (hub, files, CUDA) is a connect error
            raise ConnectError(f"could not load the embedded Moshi engine "
                               f"(checkpoint {s.checkpoint!r}): {exc}") from exc
        call = EngineCall(engine, call_id, max_queued=s.max_queued_events)
        try:
            await call.open(s.admission_wait_s)
        except ServerBusyError as exc:
            raise ServerBusyError(
                f"embedded engine busy: {exc} (moshi.slots={engine.slots}, "
                f"moshi.admission_wait_s={s.admission_wait_s:g})"
            ) from None
        self.call = call
        self.session_id = f"embedded-{uuid.uuid4().hex[:12]}"
        assert call.slot is not None
        self.log.info("embedded_session_opened", session_id=self.session_id,
                      slot=call.slot.index)
        return self.session_id

    async def send_frame(self, pcm: PCM) -> None:
        if self.call is None:
            raise ConnectError("send_frame() before open()")
        if pcm.dtype != np.float32 or pcm.shape != (MOSHI_FRAME_SAMPLES,):
            raise ValueError(
                f"a Moshi frame is {MOSHI_FRAME_SAMPLES} float32 samples, "
                f"got {pcm.dtype} {pcm.shape}"
            )
        if self._closed or self.call.closed:
            return
        with contextlib.suppress(RuntimeError):  # the slot closed under us: moot
            # Paced: a sender faster than real time waits for the engine's clock rather
            # than losing audio (ADR 0032).
            await self.call.send_paced(pcm)

    async def receive(self) -> AsyncIterator[TransportEvent]:
        from ..engine.slot import SlotError

        if self.call is None:
            raise ConnectError("receive() before open()")
        async for ev in self.call.events():
            if isinstance(ev, SlotError):
                yield PeerError(ev.message, code="engine")
                yield PeerClosed(code=None, reason=ev.message, clean=False)
                return
            yield AgentAudio(ev.pcm)
            if ev.text:
                yield AgentText(ev.text)

    async def close(self) -> None:
        self._closed = True
        if self.call is not None:
            self.call.close()

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
from pathlib import Path
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
    CallerFlushed,
    CallerText,
    MoshiTransport,
    PeerClosed,
    PeerError,
    SteerUpdate,
    TransportEvent,
)

if TYPE_CHECKING:
    from ..engine.call_sampling import CallSampling
    from ..engine.session import EngineCall

__all__ = ["EmbeddedTransport"]

log = get_logger(__name__)


def _voice_file(voice: str | None) -> str | None:
    """``voice`` when it names an audio file (loaded into the engine's voices), else None."""
    if voice is None or not voice.lower().endswith((".wav", ".flac", ".mp3", ".ogg")):
        return None
    return str(Path(voice).expanduser().resolve())


def _call_sampling(settings: MoshiSettings, default: CallSampling) -> CallSampling:
    """This call's sampling: the settings that are set, over the engine's default."""
    from dataclasses import replace

    from ..engine.call_sampling import SAMPLING_KEYS

    given = {k: getattr(settings, k) for k in SAMPLING_KEYS if getattr(settings, k) is not None}
    if settings.seed is not None:  # NVIDIA's one seed: both streams' unless set apart
        given.setdefault("text_seed", settings.seed)
        given.setdefault("audio_seed", settings.seed)
    return replace(default, **given)


class EmbeddedTransport(MoshiTransport):
    """One call in the process-wide batched engine for ``settings``."""

    def __init__(self, settings: MoshiSettings) -> None:
        self.settings = settings
        self.call: EngineCall | None = None
        self.session_id: str | None = None
        self._closed = False
        self._says = 0
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
        # Sampling is per call (ADR 0080): every call of one model shares one engine.
        from ..engine.persona import PersonaError, make_prompt

        prompt = make_prompt(s.persona, s.voice)  # checked by the settings already
        file_voice = _voice_file(s.voice)
        key = EngineKey(s.checkpoint, s.device, s.dtype, s.context, None, s.stt,
                        (file_voice,) if file_voice else ())
        try:
            engine = await get_engine(key, s.slots)
        except Exception as exc:  # any loader failure (hub, files, CUDA) is a connect error
            raise ConnectError(f"could not load the embedded Moshi engine "
                               f"(checkpoint {s.checkpoint!r}): {exc}") from exc
        from ..engine.call_sampling import SamplingError

        try:
            sampling = _call_sampling(s, engine.default_sampling)
        except SamplingError as exc:
            raise ConnectError(f"invalid per-call sampling: {exc}") from None
        call = EngineCall(engine, call_id, max_queued=s.max_queued_events)
        try:
            await call.open(s.admission_wait_s, sampling, prompt)
        except PersonaError as exc:
            raise ConnectError(f"persona refused: {exc}") from None
        except ServerBusyError as exc:
            raise ServerBusyError(
                f"embedded engine busy: {exc} (moshi.slots={engine.slots}, "
                f"moshi.admission_wait_s={s.admission_wait_s:g})"
            ) from None
        self.call = call
        self.caller_transcript = engine.stt is not None
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
        from ..engine.slot import SlotError, SttOutput

        if self.call is None:
            raise ConnectError("receive() before open()")
        async for ev in self.call.events():
            if isinstance(ev, SlotError):
                yield PeerError(ev.message, code="engine")
                yield PeerClosed(code=None, reason=ev.message, clean=False)
                return
            if isinstance(ev, SttOutput):
                if ev.step >= 0 and ev.token >= 0:
                    yield CallerText(ev.text, ev.stream_ms, ev.end_of_turn)
                if ev.final:
                    yield CallerFlushed()
                continue
            for mark in ev.steering:
                yield SteerUpdate(mark.request_id, mark.status)
            yield AgentAudio(ev.pcm)
            if ev.text:
                yield AgentText(ev.text)

    # -- steering (ADR 0070) --------------------------------------------------------------

    @property
    def steerable(self) -> bool:
        return True

    def _steer_call(self) -> EngineCall:
        if self.call is None or self._closed or self.call.closed:
            raise ConnectError("steering needs an open embedded session")
        return self.call

    def _next_id(self) -> str:
        self._says += 1
        return f"say-{self._says}"

    async def say_text(self, text: str) -> str:
        return self._steer_call().say_text(text, self._next_id())

    async def say_audio(self, pcm: PCM, text: str = "") -> str:
        return await self._steer_call().say_audio(pcm, text, self._next_id())

    @property
    def persona_refusal(self) -> str | None:
        if self.call is None or self._closed or self.call.closed:
            return "the embedded session is not open"
        support = self.call.engine.persona_support
        if not support.prompts:
            return (f"checkpoint {support.checkpoint or self.settings.checkpoint!r} is a "
                    f"{support.family} checkpoint, not trained for personas (PersonaPlex is)")
        return None

    async def set_persona(self, persona: str | None, voice: str | None) -> None:
        from ..engine.persona import PersonaError, make_prompt

        call = self._steer_call()
        prompt = make_prompt(persona, voice)
        if prompt is None:
            raise PersonaError("set_persona needs a persona or a voice")
        assert call.slot is not None
        call.engine.change_persona(call.slot, prompt)
        await call.engine.prompt_ready(call.slot)

    async def cancel_say(self, flush: bool = True) -> None:
        self._steer_call().cancel_say(flush)
    async def flush_caller(self) -> None:
        if self.call is not None:
            self.call.flush_caller()

    async def close(self) -> None:
        self._closed = True
        if self.call is not None:
            self.call.close()

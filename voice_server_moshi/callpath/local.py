"""The engine interface's first implementation: the engine in this process.

Used by ``serve`` directly, and by the data plane's engine side (:mod:`..cluster.engine_side`)
to serve the calls of ingresses in other processes, so a request means the same on every
front door.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from .._log import get_logger
from ..engine.call_sampling import parse_sampling_query
from ..engine.core import Engine
from ..engine.persona_run import PromptRun
from ..engine.session import DEFAULT_MAX_QUEUED, EngineCall
from ..errors import SteeringRequestError
from .kinds import (
    PCM,
    CallEvent,
    CallParams,
    CallRequest,
    CancelSay,
    FinishCaller,
    Grant,
    SayText,
    SteerAnswer,
)

__all__ = ["LocalCall", "LocalEngine"]

log = get_logger(__name__)


class LocalCall:
    """A :class:`~.kinds.CallLink` over an :class:`EngineCall`."""

    def __init__(self, call: EngineCall, grant: Grant) -> None:
        self.call = call
        self.grant = grant

    async def send_frame(self, pcm: PCM) -> bool:
        try:
            self.call.send(pcm)
        except RuntimeError:
            return False  # the engine closed this call; its events say why
        return True

    async def request(self, req: CallRequest) -> SteerAnswer | None:
        call = self.call
        if isinstance(req, CancelSay):
            for rid in call.cancel_say(req.flush):
                call.log.info("steering cancelled", request_id=rid)
            return None
        if isinstance(req, FinishCaller):
            call.flush_caller()
            return None
        try:
            if isinstance(req, SayText):
                call.say_text(req.text, req.request_id)
            else:
                pcm = np.frombuffer(req.pcm16, dtype="<i2").astype(np.float32) / 32768.0
                await call.say_audio(pcm, req.text, req.request_id)
        except SteeringRequestError as exc:
            call.log.info("steering request refused", request_id=req.request_id,
                          error=str(exc))
            return SteerAnswer(req.request_id, "failed", str(exc))
        call.log.info("steering request queued", request_id=req.request_id,
                      kind="text" if isinstance(req, SayText) else "audio")
        return SteerAnswer(req.request_id, "queued")

    def events(self) -> AsyncIterator[CallEvent]:
        return self.call.events()  # the engine's own queue, no extra generator per frame

    async def aclose(self) -> None:
        self.call.close()


class LocalEngine:
    """An :class:`~.kinds.EngineGateway` over ``engine`` (started by its owner)."""

    def __init__(self, engine: Engine, *, max_queued_outputs: int = DEFAULT_MAX_QUEUED) -> None:
        self.engine = engine
        self.max_queued_outputs = max_queued_outputs

    def grant_for(self, sampling: dict[str, object], run: PromptRun | None = None) -> Grant:
        models = self.engine.models
        return Grant(sampling=sampling, model=models.description,
                     lm_model_file=models.lm_file or models.description,
                     mimi_model_file=models.mimi_file or models.description,
                     slots=self.engine.slots, caller_transcript=self.engine.stt is not None,
                     per_call_sampling=self.engine.sampler is not None,
                     persona=None if run is None else run.prompt.text,
                     voice=None if run is None else run.prompt.voice,
                     persona_cached=None if run is None else run.cached)

    async def open(self, call_id: str, params: CallParams, wait_s: float) -> LocalCall:
        """Checks the persona before a slot is taken (PersonaError) and returns once its
        prompt is in the row (ADR 0130): the caller's handshake comes after."""
        sampling = parse_sampling_query(params.sampling_query,
                                        self.engine.default_sampling).seeded()
        call = EngineCall(self.engine, call_id, max_queued=self.max_queued_outputs)
        try:
            slot = await call.open(wait_s, sampling, params.prompt)
        except BaseException:  # the caller left while its prompt prefilled: free the slot
            call.close()
            raise
        return LocalCall(call, self.grant_for(sampling.as_dict(), slot.prompt_run))

"""A front door's side of a call, the same for every front door (ADR 0110): the
protocol session (steering, caller transcripts, metadata from what the engine granted),
the per-call query checked before a slot is taken, admission through an
:class:`~.kinds.EngineGateway` (a full engine: ``0x05`` "server busy" and 1013), then the
:class:`~.server_call.ServerCall`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..engine.call_sampling import CallSampling, SamplingError, parse_sampling_query
from ..engine.persona import PersonaError, PersonaSupport, check_persona
from ..errors import ServerBusyError
from ..moshi import caller_protocol
from ..moshi.session import QueryError, ServerSession
from ..moshi.session.steering import ServerSteering
from ..server.counters import ServerCounters
from ..server.limits import CallLimits, CloseReason
from ..server.metadata import call_metadata
from .kinds import CallParams, EngineGateway, Grant
from .server_call import CallerGone, CallerSocket, ServerCall

__all__ = ["CallFront", "grant_metadata"]


def grant_metadata(grant: Grant, *, instance_name: str,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``0x04`` metadata of a call: Kyutai's Rust schema with the applied sampling
    and seeds (:func:`~voice_server_moshi.server.metadata.call_metadata`), then ours."""
    ours: dict[str, Any] = {"slots": grant.slots, "model": grant.model,
                            "per_call_sampling": grant.per_call_sampling}
    if grant.voice is not None:  # a persona prompt was applied (ADR 0130)
        ours.update(persona=grant.persona, voice=grant.voice,
                    persona_cached=grant.persona_cached)
    if grant.caller_transcript:  # docs/protocol.md: 0x50-0x53 (an STT beside Moshi)
        ours[caller_protocol.METADATA_KEY] = True
    return call_metadata(CallSampling(**grant.sampling), lm_model_file=grant.lm_model_file,
                         mimi_model_file=grant.mimi_model_file, instance_name=instance_name,
                         extra={**ours, **grant.extra, **(extra or {})})


async def _flush(caller: CallerSocket, session: ServerSession) -> None:
    with contextlib.suppress(CallerGone):
        for item in session.data_to_send():
            if isinstance(item, bytes):
                await caller.send(item)
            else:
                await caller.close(item.code, item.reason)


@dataclass
class CallFront:
    """How one front door runs its calls."""

    limits: CallLimits
    max_message_bytes: int
    instance_name: str
    admission_wait_s: float = 0.0
    #: The engine's per-call sampling defaults: a query is checked over them, so a value
    #: the engine would refuse never takes a slot.
    default_sampling: Callable[[], CallSampling] = CallSampling
    counters: ServerCounters = field(default_factory=ServerCounters)
    #: What the engine's model takes of personas (ADR 0130): a persona or voice it cannot
    #: take is refused before a slot is taken. None: not known here (the engine checks).
    persona_support: Callable[[], PersonaSupport | None] = lambda: None

    def check_query(self, query: Mapping[str, str]) -> Mapping[str, Any]:
        """A session's ``query_parser``: the call's parameters, checked (ADR 0080, 0130)."""
        try:
            parse_sampling_query(query, self.default_sampling())
            params = CallParams.from_query(query)
            support = self.persona_support()
            if support is not None:
                check_persona(params.prompt, support)
        except (SamplingError, PersonaError) as exc:
            raise QueryError(str(exc)) from None
        return {"call": params}

    def new_session(self, granted: list[Grant], extra: Mapping[str, Any]) -> ServerSession:
        """A call's protocol session; its metadata comes from ``granted[0]``."""
        session = ServerSession(
            max_message_bytes=self.max_message_bytes, query_parser=self.check_query,
            metadata_builder=lambda _s: grant_metadata(
                granted[0], instance_name=self.instance_name, extra=extra),
            max_malformed_replies=self.limits.max_malformed)
        ServerSteering(session)  # 0x02 say text, 0x41 say audio, 0x42 cancel (ADR 0070)
        return session

    async def serve_call(
        self, caller: CallerSocket, query: Mapping[str, str] | str, gateway: EngineGateway,
        call_id: str, clog: Any, *, extra_metadata: Mapping[str, Any] | None = None,
        track: Callable[[ServerCall], AbstractContextManager[Any]] | None = None,
    ) -> CloseReason | None:
        """Run one caller's call from its first message to its close; None when it was
        refused (bad query, server busy)."""
        counters = self.counters
        granted: list[Grant] = []
        session = self.new_session(granted, extra_metadata or {})
        counters.connections += 1
        if not session.accept(query):  # per-call parameters, before a slot is taken
            clog.info("call refused: bad request", reason=session.close_reason)
            await _flush(caller, session)
            return None
        try:
            link = await gateway.open(call_id, session.params["call"], self.admission_wait_s)
        except ServerBusyError as exc:
            counters.refused_busy += 1
            clog.info("call refused: server busy", detail=str(exc))
            session.refuse_busy(str(exc))
            await _flush(caller, session)
            return None
        except PersonaError as exc:  # the engine's own check (one this door could not make)
            clog.info("call refused: bad request", reason=str(exc))
            session.refuse_bad_request(str(exc))
            await _flush(caller, session)
            return None
        if session.params["call"].prompt is not None and link.grant.voice is None:
            # An engine of a version before personas ignores the hello's persona: never
            # run the call without it (a silently dropped persona is the one thing not
            # to do; ADR 0130).
            await link.aclose()
            clog.warning("call refused: the engine ignored the persona")
            session.refuse_bad_request("this engine did not apply the persona (an engine "
                                       "version without persona support?)")
            await _flush(caller, session)
            return None
        granted.append(link.grant)
        if link.grant.caller_transcript:
            caller_protocol.install_server(session)  # 0x52: the client asks for last words
        call = ServerCall(call_id, caller, session, link, limits=self.limits, counters=counters,
                          clog=clog)
        counters.active_connections += 1
        try:
            with track(call) if track is not None else _nothing():
                reason = await call.run()
        finally:
            counters.active_connections -= 1
        clog.info("call ended", reason=reason.value)
        return reason


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield

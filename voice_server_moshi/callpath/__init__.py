"""One call path for every front door (ADR 0110).

A server-side call (:mod:`.server_call`: the sans-I/O session, the call's limits, Opus,
steering, caller transcripts) runs between a caller's WebSocket (any shell behind
:class:`~.server_call.CallerSocket`) and one engine interface (:mod:`.kinds`:
:class:`~.kinds.EngineGateway` opens a :class:`~.kinds.CallLink`), which has two
implementations: the engine in this process (:mod:`.local`) and a data-plane client to an
engine in another process or replica (:mod:`.remote`, wire format :mod:`.wire`).
"""

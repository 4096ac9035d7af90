"""A standing, stateful protocol fuzz of ``serve``'s sans-I/O call front (issue 25 item 4):
the server session as ``serve`` builds it (steering and caller-transcript kinds, the
sampling query parser, 10 answered malformed messages), the call's limits
(:class:`CallGuard`, on a virtual clock) and the Ogg/Opus decoder, fed sequences of valid,
mutated and random messages (:mod:`voice_server_moshi.bench.fuzz_messages`, the same
generator the live ``bench fuzz`` uses) with the clock, the client's close and the
operator's close interleaved. Invariants after every step: no exception escapes, every
message out decodes, every refusal is a ``0x05`` then one close frame with a documented
code, state only moves forward, the verdict on each message is the one its label says,
and what a connection holds stays bounded."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from voice_server_moshi.audio.ogg_meter import OggOpusMeter
from voice_server_moshi.bench.fuzz_messages import Fuzzed, MessageMaker, opus_stream, query
from voice_server_moshi.callpath.front import CallFront
from voice_server_moshi.callpath.kinds import Grant
from voice_server_moshi.engine.call_sampling import CallSampling
from voice_server_moshi.moshi import caller_protocol, protocol
from voice_server_moshi.moshi.session import (
    CloseFrame,
    MalformedReceived,
    ServerSession,
    SessionEvent,
    SessionState,
)
from voice_server_moshi.moshi.session.steering import (
    SayAudioRequested,
    SayTextRequested,
    ServerSteering,
)
from voice_server_moshi.moshi.steering_protocol import STEER_UPDATE, decode_steering

pytest.importorskip("sphn")

from voice_server_moshi.audio.opus import OpusDecoder
from voice_server_moshi.server.limits import CallGuard, CallLimits, Reap

#: Small, so an oversized message is cheap to make; serve's default is 1 MiB.
MAX_BYTES = 64 * 1024
LIMITS = CallLimits()
#: The close codes docs/operations.md and the session document.
CLOSE_CODES = {1000, 1001, 1007, 1008, 1011, 1013}
STREAM = opus_stream(40)
_ORDER = list(SessionState)


def serve_session() -> ServerSession:
    """The adapter to ``serve``'s session: the call front's own factory (every front door
    builds its sessions there, ADR 0110), granted a call with an STT beside Moshi so the
    caller-transcript kinds are on too."""
    front = CallFront(limits=LIMITS, max_message_bytes=MAX_BYTES, instance_name="fuzz")
    grant = Grant(sampling=CallSampling().as_dict(), model="dev", lm_model_file="lm",
                  mimi_model_file="mimi", slots=4, caller_transcript=True)
    session = front.new_session([grant], {})
    caller_protocol.install_server(session)  # as the front does for such a grant
    return session


class ServeCallFront(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.session = serve_session()
        steering = ServerSteering.of(self.session)
        assert steering is not None
        self.steering = steering
        self.now = 0.0
        self.guard = CallGuard(LIMITS, self.now)
        self.decoder = OpusDecoder(24000)
        self.maker: MessageMaker | None = None
        self.closes: list[CloseFrame] = []
        self.errors_out = 0
        self.last_kind = -1
        self.last_rid = 0
        self.state_index = 0

    # -- the shell: what serve does with each message (server/intake.py) ---------------

    def reap(self, verdict: Reap) -> None:
        self.session.fail(verdict.message, code=verdict.code, reason=verdict.reason.value)

    def deliver(self, data: bytes | str) -> list[SessionEvent]:
        verdict = self.guard.on_message(self.now)
        if verdict is not None:
            self.reap(verdict)
            return []
        events = self.session.receive_data(data)
        for ev in events:
            if not self.session.open:
                break
            if isinstance(ev, MalformedReceived):
                verdict = self.guard.on_malformed()
            elif hasattr(ev, "data"):  # AudioReceived
                verdict = self.guard.before_audio(ev.data, self.now)
                if verdict is None:
                    try:
                        pcm = self.decoder.decode(ev.data)
                    except Exception as exc:  # what serve catches; a BaseException escapes
                        self.session.reject_audio(str(exc))
                        continue
                    verdict = self.guard.after_audio(len(pcm) / 24000, self.now)
            elif isinstance(ev, SayTextRequested | SayAudioRequested):
                n = int(ev.request_id.rpartition("-")[2])
                # Ids rise; a refused (empty) request took a number too.
                assert self.last_rid < n <= self.steering.seq, (ev.request_id, self.last_rid)
                self.last_rid = n
                self.steering.update(ev.request_id, "queued")
            if verdict is not None:
                self.reap(verdict)
        return events

    # -- rules -----------------------------------------------------------------------

    @initialize(rng=st.randoms(use_true_random=False), busy=st.booleans())
    def connect(self, rng: random.Random, busy: bool) -> None:
        self.maker = MessageMaker(rng, STREAM, max_message_bytes=MAX_BYTES, flush_caller=True)
        target, valid = query(rng)
        accepted = self.session.accept(target)
        assert valid is None or accepted is valid, target
        if not accepted:
            return
        if busy and rng.random() < 0.1:
            self.session.refuse_busy("all 4 slots are in use")
        else:
            self.session.start()

    @rule(n=st.integers(1, 30))
    def messages(self, n: int) -> None:
        assert self.maker is not None
        for _ in range(n):
            m: Fuzzed = self.maker.next()
            was_open = self.session.open
            malformed_before = self.session.counters["protocol_errors"]
            events = self.deliver(m.data)
            if not was_open or m.expect == "any":
                continue
            bad = [e for e in events if isinstance(e, MalformedReceived)]
            if m.expect == "malformed":
                # Unless the rate limit closed the call first, it is a clear error.
                closed_first = (self.session.counters["protocol_errors"] == malformed_before
                                and not self.session.open)
                assert bad or closed_first, (m.family, m.data[:40])
            else:
                assert not bad, (m.family, m.data[:60], bad)

    @rule(data=st.binary(max_size=200))
    def raw(self, data: bytes) -> None:
        self.deliver(data)

    @rule(dt=st.sampled_from([0.0, 0.08, 0.5, 3.0, 11.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        if self.session.open:
            verdict = self.guard.check_timeouts(self.now)
            if verdict is not None:
                self.reap(verdict)

    @rule(code=st.sampled_from([1000, 1001, 1006, None]))
    def client_closes(self, code: int | None) -> None:
        self.session.receive_close(code, clean=code is not None)

    @precondition(lambda self: self.session.open)
    @rule(code=st.sampled_from([1001, 1000]))
    def server_closes(self, code: int) -> None:
        self.session.close(code, "server shutting down" if code == 1001 else "operator")

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def everything_sent_is_well_formed(self) -> None:
        for out in self.session.data_to_send():
            assert not self.closes, f"{out!r} after the close frame"
            if isinstance(out, CloseFrame):
                assert out.code in CLOSE_CODES and out.reason, out
                if out.code not in (1000, 1001):  # a refusal says why, just before
                    assert self.last_kind == protocol.Kind.ERROR, out
                self.closes.append(out)
                continue
            assert len(out) < 64 * 1024
            self.last_kind = out[0]
            if out[0] == STEER_UPDATE:
                decode_steering(STEER_UPDATE, out[1:])
                continue
            msg = protocol.decode(out)
            if isinstance(msg, protocol.ErrorMessage):
                assert msg.message
                self.errors_out += 1
        assert self.session.data_to_send() == []

    @invariant()
    def state_moves_forward_and_stays_bounded(self) -> None:
        i = _ORDER.index(self.session.state)
        assert i >= self.state_index
        self.state_index = i
        assert self.session.counters["malformed_replies"] <= LIMITS.max_malformed
        assert self.guard.malformed <= LIMITS.max_malformed + 1
        assert len(self.closes) <= 1
        if self.session.state is not SessionState.OPEN:
            assert self.session.receive_data(b"\x02late") == []
        # The meter holds at most one page (RFC 3533: 65 307 bytes) between messages.
        meter: OggOpusMeter = self.guard._meter
        assert len(meter._buf) <= 27 + 255 + 255 * 255


#: CI runs 150 connections of up to 25 steps (a few thousand messages, seconds); set
#: VSM_FUZZ_EXAMPLES for a longer run.
ServeCallFront.TestCase.settings = settings(
    max_examples=int(os.environ.get("VSM_FUZZ_EXAMPLES", "150")), stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_serve_call_front_under_fuzz = ServeCallFront.TestCase


def test_a_finished_session_is_freed_with_its_extensions() -> None:
    # Found by the live fuzz (bench fuzz): every connection's ServerSession and
    # ServerSteering stayed alive for the life of serve (about 3 kB per connection), held
    # by steering's registry of installed extensions.
    import gc
    import weakref

    session = serve_session()
    session.accept("/api/chat")
    session.start()
    session.receive_data(b"\x02hello")
    steering = ServerSteering.of(session)
    assert steering is not None and steering.session is session
    gone = weakref.ref(session)
    session.receive_close(1000)
    del session, steering
    gc.collect()
    assert gone() is None

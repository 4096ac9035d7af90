"""Per-call limits of ``serve``: when a call is reaped, and how one call is kept from
costing the others (ADR 0065).

:class:`CallGuard` is sans-I/O: the server tells it what arrived and when (a monotonic
clock it passes in) and it answers with a :class:`Reap` (why, which close code, what
``0x05`` text) or None. It covers

* timeouts: no audio within ``first_audio_s`` of the handshake, no audio message for
  ``no_input_s`` mid-call (Moshi needs continuous input, so a long silence of *messages*
  is a dead or stuck client), and an optional ``max_call_s``;
* input accounting: the audio a call has sent, counted from Ogg page headers and Opus TOC
  bytes *before* decoding (:mod:`..audio.ogg_meter`), may run at most
  ``max_audio_ahead_s`` ahead of the wall clock since its first audio message, so an
  "Opus bomb" (a tiny page that decodes to seconds) is refused before it costs CPU;
* a message budget: ``max_messages_per_s`` on average with a burst allowance, and at most
  ``max_malformed`` malformed messages per call (each gets one ``0x05`` reply; the next
  one closes the call), so an unread flood of error replies cannot pile up.

Keepalive (WebSocket pings) is websockets' own; its settings live here too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..audio.moshi_frame import SAMPLE_RATE
from ..audio.ogg_meter import OggOpusMeter

__all__ = ["CLOSE_BAD_PAYLOAD", "CLOSE_NORMAL", "CLOSE_POLICY", "CallGuard", "CallLimits",
           "CloseReason", "Reap"]

CLOSE_NORMAL = 1000
#: RFC 6455 1008 policy violation: the client broke a limit (idle, flood, too fast).
CLOSE_POLICY = 1008
CLOSE_BAD_PAYLOAD = 1007


class CloseReason(enum.StrEnum):
    """Why a call ended: the ``reason`` label of ``moshi_server_calls_closed_total``."""

    CLIENT = "client_closed"
    FIRST_AUDIO = "first_audio_timeout"
    NO_INPUT = "no_input_timeout"
    MAX_CALL = "max_call_length"
    AHEAD = "input_ahead_of_real_time"
    FLOOD = "message_flood"
    MALFORMED = "too_many_malformed"
    BAD_AUDIO = "bad_audio"
    TOO_BIG = "message_too_big"
    KEEPALIVE = "keepalive_timeout"
    ENGINE = "engine_error"
    SEND_FAILED = "send_failed"
    OPERATOR = "operator"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class Reap:
    """End the call: send ``0x05`` ``message``, then close with ``code``."""

    reason: CloseReason
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Every limit; None switches a timeout off. Defaults and why: ADR 0065."""

    #: Seconds from the handshake to the first audio message.
    first_audio_s: float | None = 5.0
    #: Seconds without an audio message mid-call.
    no_input_s: float | None = 10.0
    #: Longest call (None: uncapped; Kyutai's own servers stop at 360 s).
    max_call_s: float | None = None
    #: WebSocket keepalive: a ping every ``ping_interval_s``; no pong within
    #: ``ping_timeout_s`` closes the connection (a frozen peer is gone within their sum).
    ping_interval_s: float | None = 5.0
    ping_timeout_s: float | None = 5.0
    #: How long a closing handshake may wait for the peer (websockets' default is 10 s,
    #: which a frozen peer would hold a connection for after being reaped).
    close_timeout_s: float = 2.0
    #: How far the audio a call sent may run ahead of the wall clock.
    max_audio_ahead_s: float = 2.0
    #: Average messages per second (Kyutai's client sends 12.5) and the burst allowed.
    max_messages_per_s: float = 100.0
    message_burst: int = 500
    #: Malformed messages answered with ``0x05`` before the call is closed.
    max_malformed: int = 10

    def __post_init__(self) -> None:
        for name in ("first_audio_s", "no_input_s", "max_call_s", "ping_interval_s",
                     "ping_timeout_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 or None (off), got {v}")
        if not self.close_timeout_s > 0:
            raise ValueError(f"close_timeout_s must be > 0, got {self.close_timeout_s}")
        if not self.max_audio_ahead_s > 0:
            raise ValueError(f"max_audio_ahead_s must be > 0, got {self.max_audio_ahead_s}")
        if not self.max_messages_per_s > 0 or self.message_burst < 1:
            raise ValueError("max_messages_per_s must be > 0 and message_burst >= 1")
        if self.max_malformed < 0:
            raise ValueError(f"max_malformed must be >= 0, got {self.max_malformed}")


def _fmt(s: float) -> str:
    return f"{s:g}"


class CallGuard:
    """The limits of one call. ``now`` is any monotonic clock, in seconds."""

    def __init__(self, limits: CallLimits, now: float, sample_rate: int = SAMPLE_RATE) -> None:
        self.limits = limits
        self.sample_rate = sample_rate
        self.started_at = now
        self.first_audio_at: float | None = None
        self.last_audio_at: float | None = None
        #: Seconds of audio sent, counted before decoding (and after, if more came out).
        self.audio_s = 0.0
        self.decoded_s = 0.0
        self.malformed = 0
        self.messages = 0
        self._meter = OggOpusMeter(sample_rate)
        self._tokens = float(limits.message_burst)
        self._tokens_at = now

    # -- per message ---------------------------------------------------------------------

    def on_message(self, now: float) -> Reap | None:
        """Any message: the rate budget (a token bucket)."""
        lim = self.limits
        self.messages += 1
        self._tokens = min(float(lim.message_burst),
                           self._tokens + (now - self._tokens_at) * lim.max_messages_per_s)
        self._tokens_at = now
        self._tokens -= 1.0
        if self._tokens < 0:
            return Reap(CloseReason.FLOOD, CLOSE_POLICY,
                        f"too many messages: more than {_fmt(lim.max_messages_per_s)} per "
                        f"second on average (burst {lim.message_burst}); closing the call")
        return None

    def on_malformed(self) -> Reap | None:
        """A malformed message: None means "reply with 0x05 and go on"."""
        self.malformed += 1
        if self.malformed > self.limits.max_malformed:
            return Reap(CloseReason.MALFORMED, CLOSE_BAD_PAYLOAD,
                        f"more than {self.limits.max_malformed} malformed messages; "
                        "closing the call")
        return None

    def before_audio(self, ogg: bytes, now: float) -> Reap | None:
        """An audio message, before it is decoded: count what it holds."""
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.last_audio_at = now
        self.audio_s += self._meter.feed(ogg) / self.sample_rate
        return self._check_ahead(now)

    def after_audio(self, decoded_s: float, now: float) -> Reap | None:
        """The decoder's answer: if it made more audio than the headers said (a stream
        the meter could not read), count the difference."""
        self.decoded_s += decoded_s
        if self.decoded_s > self.audio_s:
            self.audio_s = self.decoded_s
            return self._check_ahead(now)
        return None

    def _check_ahead(self, now: float) -> Reap | None:
        assert self.first_audio_at is not None
        wall = now - self.first_audio_at
        ahead = self.audio_s - wall
        if ahead > self.limits.max_audio_ahead_s:
            return Reap(CloseReason.AHEAD, CLOSE_POLICY,
                        f"audio sent faster than real time: {self.audio_s:.1f} s of audio in "
                        f"{wall:.1f} s (at most {_fmt(self.limits.max_audio_ahead_s)} s "
                        "ahead allowed); closing the call")
        return None

    # -- timeouts ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`check_timeouts` may next fire (None: never, as things stand)."""
        lim = self.limits
        times: list[float] = []
        if self.first_audio_at is None:
            if lim.first_audio_s is not None:
                times.append(self.started_at + lim.first_audio_s)
        elif lim.no_input_s is not None and self.last_audio_at is not None:
            times.append(self.last_audio_at + lim.no_input_s)
        if lim.max_call_s is not None:
            times.append(self.started_at + lim.max_call_s)
        return min(times) if times else None

    def check_timeouts(self, now: float) -> Reap | None:
        lim = self.limits
        if lim.max_call_s is not None and now - self.started_at >= lim.max_call_s:
            return Reap(CloseReason.MAX_CALL, CLOSE_NORMAL,
                        f"maximum call length of {_fmt(lim.max_call_s)} s reached")
        if self.first_audio_at is None:
            if lim.first_audio_s is not None and now - self.started_at >= lim.first_audio_s:
                return Reap(CloseReason.FIRST_AUDIO, CLOSE_POLICY,
                            f"no audio within {_fmt(lim.first_audio_s)} s of the handshake; "
                            "closing the call")
        elif (lim.no_input_s is not None and self.last_audio_at is not None
              and now - self.last_audio_at >= lim.no_input_s):
            return Reap(CloseReason.NO_INPUT, CLOSE_POLICY,
                        f"no audio for {_fmt(lim.no_input_s)} s; closing the call")
        return None

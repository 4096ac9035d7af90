"""The per-call limit flags (ADR 0065), shared by ``serve`` and ``cluster`` so both front
doors take the same options with the same defaults and help."""

from __future__ import annotations

import argparse

from ..engine.config import DEFAULT_TRIM_AFTER_MS
from .limits import CallLimits

__all__ = ["add_limit_flags", "add_trim_flag", "limits_from_args"]

_DEFAULT = CallLimits()


def _off(v: float | None) -> str:
    return "off" if v is None else f"{v:g}"


def add_trim_flag(p: argparse.ArgumentParser) -> None:
    """``--trim-after-ms``: the engine's backlog trimming (ADR 0065), as
    :func:`~voice_server_moshi.engine.config.trim_window_ticks` reads it."""
    p.add_argument("--trim-after-ms", type=float, default=DEFAULT_TRIM_AFTER_MS,
                   help="drop a call's standing input backlog (queued more than a frame "
                   "above its target at every tick this long: a stall, not jitter) so "
                   "latency recovers; 0 never trims (ADR 0065; default %(default)g)")


def add_limit_flags(p: argparse.ArgumentParser, *, keepalive: bool = True) -> None:
    """The call-limit option group. ``keepalive=False`` leaves out the WebSocket ping
    flags (under Ray Serve the proxy, not our code, owns the caller's connection)."""
    g = p.add_argument_group("call limits (0 switches a timeout off; ADR 0065)")
    g.add_argument("--first-audio-timeout-s", type=float, default=_DEFAULT.first_audio_s,
                   help=f"close a call with no audio this long after the handshake "
                   f"(default {_off(_DEFAULT.first_audio_s)})")
    g.add_argument("--no-input-timeout-s", type=float, default=_DEFAULT.no_input_s,
                   help=f"close a call whose audio stops this long "
                   f"(default {_off(_DEFAULT.no_input_s)})")
    g.add_argument("--max-call-s", type=float, default=0.0,
                   help="close every call after this long (default off: calls run on past "
                   "the model's context)")
    if keepalive:
        g.add_argument("--ping-interval-s", type=float, default=_DEFAULT.ping_interval_s,
                       help=f"WebSocket keepalive ping period "
                       f"(default {_off(_DEFAULT.ping_interval_s)})")
        g.add_argument("--ping-timeout-s", type=float, default=_DEFAULT.ping_timeout_s,
                       help=f"close a peer that does not answer a ping this long "
                       f"(default {_off(_DEFAULT.ping_timeout_s)})")
    g.add_argument("--max-audio-ahead-s", type=float, default=_DEFAULT.max_audio_ahead_s,
                   help=f"close a call whose audio runs this far ahead of real time, counted "
                   f"before decoding (default {_DEFAULT.max_audio_ahead_s:g})")
    g.add_argument("--max-messages-per-s", type=float, default=_DEFAULT.max_messages_per_s,
                   help=f"average message rate allowed per call, burst "
                   f"{_DEFAULT.message_burst} (default {_DEFAULT.max_messages_per_s:g})")
    g.add_argument("--max-malformed", type=int, default=_DEFAULT.max_malformed,
                   help=f"malformed messages answered per call before it is closed "
                   f"(default {_DEFAULT.max_malformed})")


def limits_from_args(args: argparse.Namespace) -> CallLimits:
    """:class:`CallLimits` from the flags; 0 switches a timeout off. Raises ValueError."""
    def opt(v: float | None) -> float | None:
        return None if v is None or v == 0 else v

    return CallLimits(
        first_audio_s=opt(args.first_audio_timeout_s), no_input_s=opt(args.no_input_timeout_s),
        max_call_s=opt(args.max_call_s),
        ping_interval_s=opt(getattr(args, "ping_interval_s", _DEFAULT.ping_interval_s)),
        ping_timeout_s=opt(getattr(args, "ping_timeout_s", _DEFAULT.ping_timeout_s)),
        max_audio_ahead_s=args.max_audio_ahead_s, max_messages_per_s=args.max_messages_per_s,
        max_malformed=args.max_malformed)

"""``voice-server-moshi``: the command line. Each command lives in its own module.

Every command module exposes ``main(argv: list[str]) -> int``; modules are imported only
when their command runs, so ``--help`` stays fast and torch is loaded only where needed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

import structlog

from ._log import remember_log_level

#: command -> (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": (
        "voice_server_moshi.cli:plugins_main",
        "list the adapters, modes, caller VADs and Moshi transports that plugins register",
    ),
    "make-dev-checkpoint": (
        "voice_server_moshi.engine.checkpoints:main",
        "write the tiny random dev checkpoint (babbles: for tests and benchmarks only)",
    ),
    "serve": (
        "voice_server_moshi.server.cli:main",
        "batched Moshi server on Kyutai's /api/chat protocol (many calls, one engine)",
    ),
    "cluster": (
        "voice_server_moshi.cluster.cli:main",
        "the batched server on a local Ray Serve cluster: N engine replicas behind one URL",
    ),
    "call": (
        "voice_server_moshi.call.main:main",
        "a phone call through the plugin (embedded Moshi by default): recordings, timeline, "
        "latency report, picture",
    ),
    "make-corpus": (
        "voice_server_moshi.corpus.cli:main",
        "synthesize the labelled call corpus (espeak-ng + sox) into DIR",
    ),
    "pipecat-twilio": (
        "voice_server_moshi.pipecat.twilio_cli:main",
        "Moshi in a Pipecat pipeline behind Twilio Media Streams (TwiML at /, media at /ws)",
    ),
    "contract-report": (
        "voice_server_moshi.testing.contract.report:main",
        "run the contract suite and write the parity table (--out docs/contract-parity.md)",
    ),
}

#: ``bench <name>`` -> (module:function, one-line help); each prints JSON on stdout.
BENCHES: dict[str, tuple[str, str]] = {
    "cluster": (
        "voice_server_moshi.bench.cluster:main",
        "Ray Serve cluster vs single-process serve: added latency, CPU per call, failover",
    ),
    "turns": (
        "voice_server_moshi.bench.turns:main",
        "full-duplex turn detection on the labelled corpus: onsets, backchannels, barge-ins",
    ),
    "codecs": (
        "voice_server_moshi.bench.codecs:main",
        "full-size Mimi vs Opus CPU time per 80 ms frame (ADR 0002)",
    ),
    "audio": (
        "voice_server_moshi.bench.audio:main",
        "resampler (ours vs soxr HQ/VHQ), G.711, Opus, VAD: latency, quality, CPU (ADR 0010)",
    ),
    "vad": (
        "voice_server_moshi.bench.vad:main",
        "caller VAD onset delay, false starts, CPU on espeak-ng speech in noise (ADR 0011)",
    ),
    "adapter": (
        "voice_server_moshi.bench.adapter:main",
        "Moshi adapter CPU per call-second, whole audio path with Opus: calls per core",
    ),
    "sampling": (
        "voice_server_moshi.bench.sampling:main",
        "per-call sampling (per-row temperature, top-k, seeds) vs LMGen's: tick cost (ADR 0080)",
    ),
    "pipecat": (
        "voice_server_moshi.bench.pipecat:main",
        "Pipecat path vs the reference host on one call: added latency p50/p99, CPU per call",
    ),
    "livekit": (
        "voice_server_moshi.bench.livekit:main",
        "LiveKit AgentSession path vs the reference host on one call: added latency, CPU",
    ),
    "engine": (
        "voice_server_moshi.bench.engine:main",
        "batched engine: tick p50/p99, real-time margin, memory per slot, max real-time slots",
    ),
    "serve": (
        "voice_server_moshi.bench.serve:main",
        "real-time calls against a real serve: its tick vs bench engine's, lag percentiles",
    ),
    "serve-persona": (
        "voice_server_moshi.bench.serve_persona:main",
        "personas through a real serve: cached vs plain start, co-batched lag with a prefill",
    ),
    "fuzz": (
        "voice_server_moshi.bench.fuzz:main",
        "live serve under a protocol fuzz beside a canary call: crashes, leaks, canary lag",
    ),
    "soak": (
        "voice_server_moshi.bench.soak:main",
        "serve at 3/4 of its real-time capacity, calls coming and going: memory, fds, lag drift",
    ),
    "steering": (
        "voice_server_moshi.bench.steering:main",
        "forced lines vs Moshi's text stream (and Kyutai STT of its audio): match, pace, cost",
    ),
}


class _Stderr:
    """Writes to whatever ``sys.stderr`` is now (test runners swap and close it). A dead
    stderr (closed, or a log collector gone: EPIPE) loses the line but never raises: a
    log call must not fail the request it describes (a server would leak the call)."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


def configure_logging(level: str | None = None) -> None:
    """structlog to stderr, so stdout stays clean for JSON output."""
    name = (level or os.environ.get("VOICE_SERVER_MOSHI_LOG_LEVEL", "warning")).upper()
    lvl = getattr(logging, name, logging.WARNING)
    remember_log_level(logging.getLevelName(lvl).lower())
    logging.basicConfig(level=lvl, stream=_Stderr(), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def _run(target: str, argv: list[str]) -> int:
    module, _, func = target.partition(":")
    result = getattr(importlib.import_module(module), func)(argv)
    return int(result or 0)


def _usage() -> str:
    width = max(len(n) for n in [*COMMANDS, "bench NAME"])
    lines = ["usage: voice-server-moshi [--version] [--log-level LEVEL] COMMAND [ARGS...]", "",
             "commands:"]
    lines += [f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items()]
    lines.append(f"  {'bench NAME'.ljust(width)}  measure and print JSON; NAME is one of:")
    lines += [f"  {'':{width}}    {n}: {h}" for n, (_, h) in BENCHES.items()]
    lines.append("")
    lines.append("Run 'voice-server-moshi COMMAND --help' for a command's options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    level = None
    if args[:1] == ["--log-level"] and len(args) >= 2:
        level, args = args[1], args[2:]
    configure_logging(level)
    if args[:1] in (["--version"], ["-V"]):
        sys.stdout.write(f"voice-server-moshi {version()}\n")
        return 0
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage() + "\n")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "bench":
        if not rest or rest[0] in ("-h", "--help"):
            sys.stdout.write(_usage() + "\n")
            return 0 if rest else 2
        if rest[0] not in BENCHES:
            sys.stderr.write(f"unknown benchmark {rest[0]!r}; available: {', '.join(BENCHES)}\n")
            return 2
        return _run(BENCHES[rest[0]][0], rest[1:])
    if cmd not in COMMANDS:
        sys.stderr.write(f"unknown command {cmd!r}\n\n{_usage()}\n")
        return 2
    return _run(COMMANDS[cmd][0], rest)


def version() -> str:
    """The installed distribution's version (the package's own when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    from . import __version__

    try:
        return dist_version("voice-server-moshi")
    except PackageNotFoundError:
        return __version__


def plugins_main(argv: list[str]) -> int:
    """Print what the installed plugins register (honours VOICE_SERVER_BLOCKED_PLUGINS)."""
    import json

    from ._cli_help import command_parser
    from .registry import load_registry
    from .settings import describe_settings

    p = command_parser(
        "voice-server-moshi plugins",
        "Print, as JSON on stdout, every adapter, mode, caller VAD and Moshi transport the "
        "installed plugins register (entry-point group 'voice_server'), with each setting's "
        "key, type, default and meaning. Plugins named in $VOICE_SERVER_BLOCKED_PLUGINS "
        "(comma-separated entry-point names) are not loaded.",
    )
    p.add_argument("--verbose", action="store_true", help="indent the JSON")
    args = p.parse_args(argv)
    reg = load_registry()
    out = {
        kind: {
            name: {
                "plugin": r.plugin,
                "description": r.description,
                "settings": [
                    {"key": k, "type": t, "default": d, "help": h}
                    for k, t, d, h in (describe_settings(r.settings) if r.settings else [])
                ],
            }
            for name, r in sorted(table.items())
        }
        for kind, table in (("adapters", reg.adapters), ("modes", reg.modes),
                            ("vads", reg.vads), ("moshi_transports", reg.moshi_transports))
    }
    sys.stdout.write(json.dumps(out, indent=2 if args.verbose else None) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

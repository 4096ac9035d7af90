"""``voice-server-moshi serve``: the batched Moshi server on Kyutai's protocol.

Prints one JSON line on stdout when it listens (``{"event": "listening", ...}``, handy
with ``--port 0``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import TYPE_CHECKING

from .._cli_help import command_parser
from ..engine.persona_flags import add_persona_flags
from ..moshi import protocol
from ..moshi.settings import DEFAULT_HF_REPO
from .auth import AUTH_ENV, TokenError, read_token_file
from .limit_flags import add_limit_flags, add_trim_flag, limits_from_args

#: The event loop's CPU per call per 80 ms frame (Opus and protocol), by Opus encoder:
#: ``bench serve`` at 16 calls on this project's CPU VM (ADR 0135, ADR 0165).
LOOP_MS_PER_CALL: dict[str, float] = {"sphn": 1.45, "libopus": 1.04}
#: What one process's event loop can give its calls of each frame: it also shares the
#: interpreter with the tick ("What serve adds" in docs/engine-batching.md).
ONE_PROCESS_LOOP_MS = 70.0


def one_process_calls(opus: str = "libopus") -> int:
    """Calls whose Opus and protocol work fill one event loop: 48 with sphn, 67 with libopus."""
    return int(ONE_PROCESS_LOOP_MS / LOOP_MS_PER_CALL[opus])

if TYPE_CHECKING:
    from ..engine.core import Engine
    from .app import ServerConfig


def ingress_hint(slots: int, ingress_workers: int, cpus: int | None,
                 opus: str = "libopus") -> str | None:
    """A hint for ``serve`` where one process would carry more calls than its event loop
    can and the machine has cores to spare; ``None`` when the layout is fine."""
    per = one_process_calls(opus)
    if ingress_workers > 0 or slots <= per or (cpus or 1) < 4:
        return None
    k = min(max(1, (cpus or 1) - 2), -(-slots // per))
    return (f"--slots {slots} in one process: past about {per} calls its event loop's "
            f"Opus ({opus}) work fills its core and stretches the tick; with {cpus} cores, "
            f"consider --ingress-workers {k}")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "voice-server-moshi serve",
        "Serve many Moshi calls from one batched engine over Kyutai's /api/chat "
        "protocol, with /healthz, /readyz, /capacity and /metrics.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8998, help="port (default 8998; 0 = any)")
    p.add_argument("--slots", type=int, default=4, help="concurrent calls (default 4)")
    p.add_argument("--checkpoint", default="dev",
                   help=f"'dev' (tiny random, babbles), a local dir, or a HF repo such as "
                   f"{DEFAULT_HF_REPO}")
    p.add_argument("--stt", default=None,
                   help="caller transcripts (docs/protocol.md 0x50-0x53) from a Kyutai STT "
                   "batched beside Moshi: 'dev', a local dir, or a HF repo such as "
                   "kyutai/stt-1b-en_fr; default none")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    add_persona_flags(p)
    p.add_argument("--context", type=int, default=None,
                   help="LM context in 80 ms steps (memory per slot); default the checkpoint's")
    p.add_argument("--auth-token-file", default=None, metavar="PATH",
                   help=f"require the bearer token in PATH (first line); or set {AUTH_ENV}")
    p.add_argument("--auth-token", default=None,
                   help="require this bearer token; visible to every local user in "
                   "/proc/PID/cmdline: prefer --auth-token-file or the environment")
    p.add_argument("--auth-max-failures", type=int, default=10,
                   help="wrong tokens per address per window before 429 (default 10)")
    p.add_argument("--auth-window-s", type=float, default=60.0,
                   help="the failure window in seconds (default 60)")
    p.add_argument("--admission-wait-s", type=float, default=0.0,
                   help="how long a new call may wait for a free slot before it is refused")
    p.add_argument("--queue-frames", type=int, default=4,
                   help="per-call input queue in 80 ms frames; beyond it the oldest is dropped")
    p.add_argument("--fill-after-ms", type=float, default=None,
                   help="feed silence to a call whose input stalls this long (default: never; "
                   "the call then pauses, like Kyutai's server)")
    add_trim_flag(p)
    p.add_argument("--max-message-bytes", type=int, default=protocol.DEFAULT_MAX_MESSAGE_BYTES)
    add_limit_flags(p)
    p.add_argument("--greedy", action="store_true",
                   help="greedy decoding by default (deterministic; for tests); a call's own "
                   "text_temperature / audio_temperature query parameters still apply")
    p.add_argument("--instance-name", default="voice-server-moshi",
                   help="sent as instance_name in every call's metadata (default %(default)s)")
    p.add_argument("--static", default=None, metavar="DIR",
                   help="serve a built web client (e.g. Kyutai's client/dist) at / beside the "
                   "API (default: none)")
    p.add_argument("--ingress-workers", type=int, default=0,
                   help="run Opus and the protocol in this many worker processes sharing "
                   "the port (the engine process keeps only the model); 0: one process")
    p.add_argument("--keep-cores-awake", action="store_true",
                   help="run a lowest-priority (SCHED_IDLE) busy loop on each core so the tick "
                   "never starts on a parked vCPU: faster ticks at low load on VMs, every "
                   "core shows busy; refused under a CPU quota (ADR 0155)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    token = None
    if args.auth_token_file is not None:
        try:
            token, warnings = read_token_file(args.auth_token_file)
        except TokenError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        for w in warnings:
            sys.stderr.write(f"warning: {w}\n")
    elif args.auth_token:
        sys.stderr.write("warning: --auth-token is visible to other local users in "
                         f"/proc/{os.getpid()}/cmdline; use --auth-token-file or {AUTH_ENV}\n")
        token = args.auth_token
    else:
        token = os.environ.get(AUTH_ENV) or None
    try:
        from ..engine.spec import EngineSpec
        from .app import ServerConfig
    except ImportError as exc:
        sys.stderr.write(f"error: 'serve' needs the embedded extra "
                         f"(pip install 'voice-server-moshi[embedded]'): {exc}\n")
        return 2
    from ..audio.libopus import LibopusError
    from ..audio.opus import default_backend
    from .awake_cores import AwakeCores

    try:
        opus = default_backend()  # an operator's VOICE_SERVER_MOSHI_LIBOPUS fails here
    except LibopusError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if opus == "sphn":
        from .._log import get_logger

        get_logger(__name__).warning(
            "no libopus: agent audio is encoded through sphn, about 1.8x the encode CPU per call",
            fix="apt-get install libopus0 (or set VOICE_SERVER_MOSHI_LIBOPUS to its path)")
    try:
        awake = AwakeCores() if args.keep_cores_awake else None
        if awake is not None:
            awake.check()  # before the model loads
        spec = EngineSpec.from_args(args)
        spec.engine_config()  # bad engine flags fail before the model loads
        limits = limits_from_args(args)
        scfg = ServerConfig(host=args.host, port=args.port, auth_token=token,
                            max_message_bytes=args.max_message_bytes,
                            admission_wait_s=args.admission_wait_s,
                            instance_name=args.instance_name, static_dir=args.static,
                            limits=limits, auth_max_failures=args.auth_max_failures,
                            auth_window_s=args.auth_window_s)
        if args.static:
            from .static import StaticFiles

            StaticFiles(args.static)  # fail before the model loads: no dir, no index.html
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        engine = spec.build()
    except (ValueError, RuntimeError, OSError) as exc:
        sys.stderr.write(f"error: could not load checkpoint {args.checkpoint!r} on "
                         f"{args.device}: {exc}\n")
        return 2
    if awake is not None:
        try:
            awake.start()
        except OSError as exc:
            sys.stderr.write(f"error: --keep-cores-awake could not start its spinners: {exc}\n")
            return 2
    try:
        return _serve(args, engine, scfg, opus)
    finally:
        if awake is not None:
            awake.stop()


def _serve(args: argparse.Namespace, engine: Engine, scfg: ServerConfig, opus: str) -> int:
    from .app import run_server

    hint = ingress_hint(args.slots, args.ingress_workers, os.cpu_count(), opus)
    if hint is not None:
        from .._log import get_logger

        get_logger(__name__).warning("one process for many calls", hint=hint)
    if args.ingress_workers > 0:
        from .workers import serve_split

        return serve_split(engine, scfg, args.ingress_workers)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)

        def listening(server: object) -> None:
            from .app import BatchedServer

            assert isinstance(server, BatchedServer)
            sys.stdout.write(json.dumps({
                "event": "listening", "host": args.host, "port": server.port,
                "slots": engine.slots, "device": str(engine.device),
                "url": f"ws://{args.host}:{server.port}/api/chat",
            }) + "\n")
            sys.stdout.flush()

        await run_server(engine, scfg, on_listening=listening, stop=stop)

    try:
        asyncio.run(serve())
    except OSError as exc:  # e.g. the port is taken
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0

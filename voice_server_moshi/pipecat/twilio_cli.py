"""``voice-server-moshi pipecat-twilio``: Moshi behind Twilio Media Streams, through Pipecat.

Point a Twilio number's voice webhook at ``https://PUBLIC_HOST/`` (it answers TwiML that
streams the call to ``wss://PUBLIC_HOST/ws``). The account's auth token (``TWILIO_AUTH_TOKEN``
or ``--twilio-auth-token-file``) is required: both doors check ``X-Twilio-Signature`` with
it; ``TWILIO_ACCOUNT_SID`` beside it lets the pipeline hang up. ``--slots`` sizes the
embedded engine; a full house answers the webhook ``<Reject reason="busy"/>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Generator
from typing import Any

from .._cli_help import command_parser

__all__ = ["main", "running_app"]


@contextlib.asynccontextmanager
async def running_app(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn in this event loop; yields the bound port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="on", ws="websockets-sansio"))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # start-up failed (port taken, prewarm error): raise it
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10.0)


def _quiet_pipecat() -> None:
    """Pipecat logs through loguru at DEBUG by default: follow this CLI's log level."""
    import logging

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=logging.getLevelName(logging.getLogger().getEffectiveLevel()))


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "voice-server-moshi pipecat-twilio",
"Moshi in a Pipecat pipeline behind Twilio Media Streams: TwiML at /, "
                    "the media WebSocket at /ws.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--public-url", default=None,
                   help="behind a proxy, the URL Twilio requests (and signs): the public "
                        "https://HOST[/PREFIX] base, or the wss://HOST[/PREFIX]/ws stream URL "
                        "(default: from each request's Host header)")
    p.add_argument("--twilio-auth-token-file", default=None, metavar="PATH",
                   help="the Twilio account's auth token, to check X-Twilio-Signature "
                        "(default: TWILIO_AUTH_TOKEN)")
    p.add_argument("--insecure-no-signature", action="store_true",
                   help="take requests without a valid X-Twilio-Signature: local tests only")
    p.add_argument("--slots", type=int, default=None,
                   help="calls taken at once (embedded: the engine's slots; default the "
                        "[moshi] slots setting); a full house answers <Reject reason=busy>")
    p.add_argument("--config", default=None,
                   help="host config (.toml/.json) with [moshi] and [full-duplex] sections")
    p.add_argument("--url", default=None, help="remote Moshi server (ws://.../api/chat)")
    p.add_argument("--checkpoint", default=None, help="embedded weights (default: dev)")
    p.add_argument("--device", default=None, help="embedded: cpu, cuda, auto")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..errors import SettingsError
        from ..host.config import load_config
        from ..moshi.settings import MoshiSettings
        from .twilio import create_app
        from .twilio_doors import load_auth_token
    except ImportError as exc:
        sys.stderr.write(f"error: 'pipecat-twilio' needs the pipecat extra "
                         f"(pip install 'voice-server-moshi[pipecat]'): {exc}\n")
        return 2
    try:
        cfg = load_config(args.config)
    except SettingsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _quiet_pipecat()
    moshi = dict(cfg.adapter_settings)
    for key in ("url", "checkpoint", "device", "slots"):
        if getattr(args, key) is not None:
            moshi[key] = getattr(args, key)
    # The cap is the embedded engine's slots; with a remote server, only --slots caps.
    slots = args.slots if args.slots is not None or moshi.get("url") else int(
        moshi.get("slots", MoshiSettings.__dataclass_fields__["slots"].default))
    try:
        token, warnings = load_auth_token(args.twilio_auth_token_file)
        for warning in warnings:
            sys.stderr.write(f"warning: {warning}\n")
        if token is None and args.insecure_no_signature:
            sys.stderr.write("warning: --insecure-no-signature: anyone who can reach this "
                             "server can open calls on it; for local tests only\n")
        app = create_app(moshi, dict(cfg.mode_settings), public_url=args.public_url,
                         auth_token=token, insecure_no_signature=args.insecure_no_signature,
                         slots=slots)
    except SettingsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2

    async def serve() -> None:
        import uvicorn

        class Server(uvicorn.Server):
            # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (exit -15);
            # here they just end the server, and the command exits 0.
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        server = Server(uvicorn.Config(app, host=args.host, port=args.port,
                                       log_level="warning", ws="websockets-sansio"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        task = loop.create_task(server.serve())
        while not server.started:
            if task.done():
                break  # start-up failed (port taken): awaiting the task raises it
            await asyncio.sleep(0.05)
        if server.started:
            port = int(server.servers[0].sockets[0].getsockname()[1])
            sys.stdout.write(json.dumps({
                "event": "listening", "host": args.host, "port": port, "slots": slots,
                "signature": token is not None,
                "twiml": f"http://{args.host}:{port}/", "ws": f"ws://{args.host}:{port}/ws",
            }) + "\n")
            sys.stdout.flush()
        await task  # uvicorn ends on SIGINT/SIGTERM

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0

"""``voice-server-moshi pipecat-twilio``: Moshi behind Twilio Media Streams, through Pipecat.

Point a Twilio number's voice webhook at ``https://PUBLIC_HOST/`` (it answers TwiML that
streams the call to ``wss://PUBLIC_HOST/ws``); ``TWILIO_ACCOUNT_SID`` / ``TWILIO_AUTH_TOKEN``
in the environment let the pipeline hang up (optional).
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
                   help="wss:// URL Twilio must reach for /ws (default: from the webhook's "
                        "Host header)")
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
        from .twilio import create_app
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
    for key in ("url", "checkpoint", "device"):
        if getattr(args, key) is not None:
            moshi[key] = getattr(args, key)
    try:
        app = create_app(moshi, dict(cfg.mode_settings), public_url=args.public_url)
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
                "event": "listening", "host": args.host, "port": port,
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

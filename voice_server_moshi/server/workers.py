"""``serve --ingress-workers K``: the cluster's split on one host, without Ray (ADR 0095).

The engine process runs the model and the data plane (:mod:`..cluster.engine_side`: PCM
frames over a loopback WebSocket). K worker processes share the public port
(``SO_REUSEPORT``: the kernel spreads new connections over them) and do everything else
per call: the call path every front door shares (:mod:`..callpath`, ADR 0110: Kyutai's
protocol, limits, Ogg/Opus, steering, caller transcripts), auth. So the
per-call CPU that capped one ``serve`` process near 90 calls scales with K, and the
engine's process keeps only a few microseconds of socket work per frame.

Each worker asks the engine for a slot when a call arrives (a hello with the call's id on
the data plane, :mod:`..callpath.wire`): a full engine answers ``server busy``, which the
worker turns into ``0x05`` + close 1013, exactly like the single-process server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from websockets.asyncio.server import ServerConnection, serve

from .._log import configured_log_level, get_logger
from ..audio.opus import encoder_name
from ..callpath.front import CallFront
from ..callpath.remote import RemoteEngine
from ..engine.call_sampling import CallSampling
from ..engine.persona import PersonaSupport
from .config import ServerConfig
from .counters import ServerCounters
from .endpoints import Capacity, HttpFront
from .logsafe import install_redaction
from .ws_caller import WsCaller

log = get_logger(__name__)


class IngressWorker:
    """One worker process's server: the public port, relaying to ``data_url``."""

    def __init__(self, config: ServerConfig, data_url: str) -> None:
        self.config = config
        self.data_url = data_url
        self.http_base = data_url.replace("ws://", "http://").removesuffix("/call")
        self.counters = ServerCounters()
        self.name = f"worker-{os.getpid()}"
        self.engine_info: Mapping[str, Any] = {}
        self.gateway = RemoteEngine(data_url)
        #: /healthz, /readyz, /capacity, /metrics, auth, the static client (ADR 0110).
        self.http = HttpFront(config, self.counters, capacity=self.capacity,
                              metrics=self.metrics_text)
        self.front = CallFront(config.limits, config.max_message_bytes, config.instance_name,
                               config.admission_wait_s, default_sampling=self._default_sampling,
                               counters=self.counters, persona_support=self._persona_support)

    def _default_sampling(self) -> CallSampling:
        """The engine's per-call sampling defaults (read once, at start)."""
        return CallSampling(**self.engine_info.get("default_sampling", {}))

    def _persona_support(self) -> PersonaSupport | None:
        """What the engine's model takes of personas (read once, at start)."""
        d = self.engine_info.get("persona")
        return PersonaSupport.from_dict(d) if d else None

    async def run(self, stop: asyncio.Event, started: Any = None) -> None:
        install_redaction()
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http_client:
            self._http = http_client
            self.engine_info = (await http_client.get(self.http_base + "/capacity")).json()
            async with serve(self._handle, self.config.host, self.config.port,
                             reuse_port=True, process_request=self.http.process_request,
                             **self.config.websocket_options()) as server:
                log.info("ingress worker listening", worker=self.name, port=self.config.port,
                         opus_encoder=encoder_name())
                if started is not None:
                    started.put(os.getpid())
                await stop.wait()
                server.close(close_connections=True)

    async def capacity(self) -> Capacity:
        cap = (await self._http.get(self.http_base + "/capacity")).json()
        return Capacity(int(cap["slots"]), int(cap["free_slots"]), bool(cap["ready"]),
                        extra={"persona": cap["persona"]} if "persona" in cap else {})

    async def metrics_text(self) -> str:
        return (await self._http.get(self.http_base + "/metrics")).text

    async def _handle(self, ws: ServerConnection) -> None:
        call_id = f"srv-{uuid.uuid4().hex[:12]}"
        clog = log.bind(call_id=call_id, worker=self.name)
        await self.front.serve_call(WsCaller(ws),
                                    ws.request.path if ws.request is not None else "",
                                    self.gateway, call_id, clog)


def worker_main(config: ServerConfig, data_url: str, started: Any, log_level: str | None) -> None:
    """Entry point of a worker process (spawned): serve until SIGTERM/SIGINT."""
    from ..cli import configure_logging

    configure_logging(log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await IngressWorker(config, data_url).run(stop, started)

    asyncio.run(main())


def start_workers(config: ServerConfig, data_url: str, count: int,
                  timeout_s: float = 60) -> list[multiprocessing.process.BaseProcess]:
    """Spawn ``count`` workers on ``config.port`` and wait until each listens."""
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Queue()
    # The CLI's level (from `--log-level` or the variable); None: each worker reads the
    # variable itself, as serve's own configure_logging would.
    level = configured_log_level()
    procs: list[multiprocessing.process.BaseProcess] = [
        ctx.Process(target=worker_main, args=(config, data_url, started, level),
                    name=f"ingress-worker-{i}", daemon=True) for i in range(count)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            started.get(timeout=timeout_s)
    except Exception:
        stop_workers(procs)
        raise RuntimeError(f"ingress workers did not start within {timeout_s} s") from None
    return procs


def stop_workers(procs: list[multiprocessing.process.BaseProcess]) -> None:
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(timeout=15)
        if p.is_alive():
            p.kill()


def serve_split(engine: Any, config: ServerConfig, workers: int) -> int:
    """Run ``engine`` with its data plane in this process and ``workers`` ingress worker
    processes on ``config.port``; print the listening line; stop on SIGINT/SIGTERM."""
    import dataclasses
    import socket
    import sys
    import threading

    from ..cluster.engine_side import EngineDataServer

    port = config.port
    if port == 0:
        with socket.socket() as s:
            s.bind((config.host, 0))
            port = int(s.getsockname()[1])
    cfg = dataclasses.replace(config, port=port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine.start()
    data = EngineDataServer(engine, "127.0.0.1", max_queued_outputs=cfg.max_queued_outputs,
                            direct_reservations=True)
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        data.start()
        procs = start_workers(cfg, data.url, workers)
        sys.stdout.write(json.dumps({
            "event": "listening", "host": cfg.host, "port": port, "slots": engine.slots,
            "device": str(engine.device), "url": f"ws://{cfg.host}:{port}/api/chat",
            "ingress_workers": workers,
        }) + "\n")
        sys.stdout.flush()
        stop.wait()
        return 0
    finally:
        stop_workers(procs)
        data.stop()
        engine.stop("server shutting down")

"""``voice-server-moshi cluster``: the batched server on a local Ray cluster, one URL.

Starts Ray on this machine, on loopback whatever ``--host`` says (only Serve's HTTP proxy,
the callers' port, binds there: :mod:`.ray_auth`), or attaches to a Ray cluster of several
machines (``--ray-address``, Ray's token authentication required), deploys the Serve
application (:mod:`.app`) with ``serve``'s flags, prints one JSON line on stdout when every
engine replica is up (``{"event": "listening", ...}``), and on Ctrl-C or SIGTERM deletes
the application and stops Ray (or, attached, only deletes the application).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from .._cli_help import command_parser
from ..engine.persona_flags import add_persona_flags
from ..moshi import protocol
from ..moshi.settings import DEFAULT_HF_REPO
from ..server.auth import AUTH_ENV
from ..server.limit_flags import add_limit_flags, add_trim_flag, limits_from_args
from .ray_auth import LOOPBACK


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "voice-server-moshi cluster",
"Serve Moshi calls from several engine replicas on a local Ray cluster "
        "behind one URL (Kyutai's /api/chat, /healthz, /readyz, /capacity, /metrics).",
    )
    p.add_argument("--replicas", type=int, default=2, help="engine replicas (default 2)")
    p.add_argument("--max-replicas", type=int, default=None,
                   help="autoscale between --min-replicas and this on active calls")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--target-calls", type=float, default=None,
                   help="autoscaling target of calls per replica (default 3/4 of --slots)")
    p.add_argument("--ingress-replicas", type=int, default=1,
                   help="ingress replicas (Opus and the protocol run there)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the callers' bind address (default 127.0.0.1); Ray stays on loopback")
    p.add_argument("--port", type=int, default=8998, help="port (default 8998; 0 = any)")
    p.add_argument("--slots", type=int, default=4, help="concurrent calls per replica")
    p.add_argument("--checkpoint", default="dev",
                   help=f"'dev', a local dir, or a HF repo such as {DEFAULT_HF_REPO}")
    p.add_argument("--stt", default=None,
                   help="caller transcripts (docs/protocol.md 0x50-0x53) from a Kyutai STT "
                   "batched beside Moshi in every replica: 'dev', a local dir, or a HF repo; "
                   "default none")
    p.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per replica)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    add_persona_flags(p)
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--auth-token", default=None,
                   help=f"require this bearer token (or set {AUTH_ENV})")
    p.add_argument("--auth-token-file", default=None, help="read the bearer token from a file")
    p.add_argument("--admission-wait-s", type=float, default=0.0,
                   help="how long a new call may wait for a free slot before it is refused")
    p.add_argument("--route-timeout-s", type=float, default=2.0,
                   help="how long Serve's router may take to place a call")
    p.add_argument("--queue-frames", type=int, default=4)
    p.add_argument("--fill-after-ms", type=float, default=None)
    add_trim_flag(p)
    p.add_argument("--max-message-bytes", type=int, default=protocol.DEFAULT_MAX_MESSAGE_BYTES)
    add_limit_flags(p, keepalive=False)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (for tests)")
    p.add_argument("--instance-name", default="voice-server-moshi")
    p.add_argument("--static", default=None, metavar="DIR",
                   help="serve a built web client (e.g. Kyutai's client/dist) at / beside the "
                   "API (default: none)")
    p.add_argument("--drain-timeout-s", type=float, default=3600.0,
                   help="how long a replica being removed waits for its calls to end")
    p.add_argument("--health-check-period-s", type=float, default=2.0)
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs Ray may schedule on (default: enough for the replicas)")
    p.add_argument("--ray-address", default=None,
                   help="attach to this Ray cluster (HOST:PORT of its GCS) instead of starting "
                        "one on loopback; needs Ray's token authentication (docs/security.md)")
    p.add_argument("--ray-auth-token-file", default=None,
                   help="with --ray-address: the Ray cluster's token file (or set "
                        "RAY_AUTH_TOKEN_PATH); never the token itself")
    return p


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _own_stdout() -> TextIO:
    """Keep stdout for our JSON lines: Ray's driver prints status lines there, so fd 1 goes
    to stderr and we write through a private copy of the original stdout."""
    sys.stdout.flush()
    ours = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return ours


def _console(cfg: object, stop: threading.Event, out: TextIO) -> None:
    """Operator commands on stdin, one per line: ``scale N`` (engine replicas; a replica
    removed drains first) and ``redeploy`` (roll every replica, each drained); ``stop``.
    Each prints a JSON line on stdout when Serve has taken it."""
    from dataclasses import replace

    from ray import serve

    from .app import APP_NAME, ClusterConfig, build_app

    assert isinstance(cfg, ClusterConfig)
    generation = 0
    for line in sys.stdin:
        words = line.split()
        try:
            if words[:1] == ["scale"] and len(words) == 2:
                cfg = replace(cfg, replicas=int(words[1]))
            elif words == ["redeploy"]:
                generation += 1
                cfg = replace(cfg, engine=replace(cfg.engine, generation=generation))
            elif words == ["stop"]:
                stop.set()
                return
            else:
                sys.stderr.write(f"unknown command {line.strip()!r}: scale N | redeploy | stop\n")
                continue
            serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
            out.write(json.dumps({"event": "deployed", "command": line.strip(),
                                  "replicas": cfg.replicas}) + "\n")
            out.flush()
        except (ValueError, RuntimeError) as exc:
            sys.stderr.write(f"error: {exc}\n")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.ray_address is not None:
        from .ray_auth import RayAuthError, ray_auth_for_attach

        try:  # before Ray is imported: it reads these once
            for warning in ray_auth_for_attach(args.ray_auth_token_file):
                sys.stderr.write(f"warning: {warning}\n")
        except RayAuthError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
    elif args.ray_auth_token_file is not None:
        sys.stderr.write("error: --ray-auth-token-file goes with --ray-address (the local "
                         "cluster's Ray stays on loopback)\n")
        return 2
    token = args.auth_token or os.environ.get(AUTH_ENV) or None
    if args.auth_token_file:
        try:
            token = Path(args.auth_token_file).read_text().strip() or None
        except OSError as exc:
            sys.stderr.write(f"error: cannot read --auth-token-file: {exc}\n")
            return 2
    try:
        import ray
        from ray import serve

        from ..engine.spec import EngineSpec
        from .app import APP_NAME, ClusterConfig, build_app
        from .directory import get_directory, kill_directory
        from .ingress import IngressSpec
    except ImportError as exc:
        sys.stderr.write("error: 'cluster' needs the cluster extra "
                         f"(pip install 'voice-server-moshi[cluster]'): {exc}\n")
        return 2
    try:
        cfg = ClusterConfig(
            engine=EngineSpec.from_args(args),
            ingress=IngressSpec(app_name=APP_NAME, auth_token=token,
                                admission_wait_s=args.admission_wait_s,
                                route_timeout_s=args.route_timeout_s,
                                max_message_bytes=args.max_message_bytes,
                                instance_name=args.instance_name, static_dir=args.static,
                                limits=limits_from_args(args)),
            replicas=args.replicas, min_replicas=args.min_replicas,
            max_replicas=args.max_replicas, target_calls=args.target_calls,
            ingress_replicas=args.ingress_replicas, drain_timeout_s=args.drain_timeout_s,
            health_check_period_s=args.health_check_period_s)
        if args.slots < 1:
            raise ValueError(f"slots must be >= 1, got {args.slots}")
        if args.static:
            from ..server.static import StaticFiles

            StaticFiles(args.static)  # fail before Ray starts: no dir, no index.html
    except (ValueError, TypeError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    port = args.port or _free_port(args.host)
    most = args.max_replicas or args.replicas
    num_cpus = args.num_cpus or math.ceil(most * cfg.engine_num_cpus
                                          + args.ingress_replicas * cfg.ingress_num_cpus) + 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts workers at nice 15; an engine replica paces real-time calls and must not
    # lose the CPU to every batch job on the host.
    os.environ.setdefault("RAY_worker_niceness", "0")
    out = _own_stdout()
    if args.ray_address is not None:
        ray.init(address=args.ray_address, log_to_driver=False, configure_logging=False)
    else:
        # address="local": always a new cluster of our own, never one found on the machine.
        # Ray's own services, workers and the replicas' data planes stay on loopback: left
        # alone Ray picks the machine's address and listens on every interface, without
        # authentication (ADR 0100). Only Serve's proxy binds to --host (below).
        ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False,
                 num_cpus=num_cpus, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": args.host, "port": port},
                    logging_config={"enable_access_log": False})
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
        directory = get_directory(APP_NAME)
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            reps = ray.get(directory.snapshot.remote())
            if sum(1 for r in reps if r["ready"]) >= (args.min_replicas if args.max_replicas
                                                      else args.replicas):
                break
            time.sleep(0.2)
        else:
            if not stop.is_set():
                sys.stderr.write("error: engine replicas did not come up within 600 s\n")
                return 1
        if not stop.is_set():
            out.write(json.dumps({
                "event": "listening", "host": args.host, "port": port,
                "replicas": len(reps), "slots": args.slots, "device": args.device,
                "url": f"ws://{args.host}:{port}/api/chat",
                "ray_address": ray.get_runtime_context().gcs_address,
                "app": APP_NAME,
            }) + "\n")
            out.flush()
        threading.Thread(target=_console, args=(cfg, stop, out), daemon=True).start()
        stop.wait()
        return 0
    finally:
        with contextlib.suppress(Exception):
            if args.ray_address is not None:  # a shared cluster: remove only what we added
                serve.delete(APP_NAME)
            else:
                serve.shutdown()
        with contextlib.suppress(Exception):
            kill_directory(APP_NAME)
        ray.shutdown()

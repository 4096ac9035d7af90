"""Build the Ray Serve application: an ingress in front of engine replicas.

Importing this module imports Ray: only ``cluster`` commands and tests do. The same
application runs under ``voice-server-moshi cluster`` (a local Ray cluster on one
machine) and from a Serve config file on KubeRay (``deploy/``, the import path
``voice_server_moshi.cluster.app:app_from_args``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ray import serve
from ray.serve import Application

from .engine_replica import EngineReplica, EngineSpec
from .ingress import Ingress, IngressSpec

APP_NAME = "voice-server-moshi"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    engine: EngineSpec = field(default_factory=EngineSpec)
    ingress: IngressSpec = field(default_factory=IngressSpec)
    #: Fixed engine replica count; ignored when ``max_replicas`` is set (autoscaling).
    replicas: int = 2
    min_replicas: int = 1
    max_replicas: int | None = None
    #: Autoscaling target: active calls per replica (default: 3/4 of the slots).
    target_calls: float | None = None
    ingress_replicas: int = 1
    #: A replica being removed waits this long for its calls to end (the drain limit):
    #: set it above the longest call you accept.
    drain_timeout_s: float = 3600.0
    health_check_period_s: float = 2.0
    health_check_timeout_s: float = 10.0
    #: GPUs per engine replica; None: 1 on cuda devices, 0 on cpu.
    num_gpus: float | None = None
    engine_num_cpus: float = 1.0
    ingress_num_cpus: float = 0.5

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.max_replicas is not None and not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= min_replicas <= max_replicas")
        if self.ingress_replicas < 1:
            raise ValueError(f"ingress_replicas must be >= 1, got {self.ingress_replicas}")
        if self.drain_timeout_s <= 0 or self.health_check_period_s <= 0:
            raise ValueError("drain_timeout_s and health_check_period_s must be > 0")

    def versions(self) -> tuple[str, str]:
        """(engine, ingress) code/config versions that ignore the replica counts: changing
        only those scales in place; anything else that a deployment's replicas were built
        from is a rolling redeploy of that deployment (each old replica drains). The
        ingress's does not cover the engine's spec (it holds only a handle), so rolling the
        engines (``redeploy``) leaves the ingress, and the calls' WebSockets, alone."""
        d = asdict(self)
        for k in ("replicas", "min_replicas", "max_replicas", "target_calls",
                  "ingress_replicas"):
            d.pop(k)
        d["ingress"].pop("auth_token")
        engine = {k: d[k] for k in ("engine", "drain_timeout_s", "health_check_period_s",
                                    "health_check_timeout_s", "num_gpus", "engine_num_cpus")}
        ingress = {k: d[k] for k in ("ingress", "drain_timeout_s", "ingress_num_cpus")}
        return _digest(engine), _digest(ingress)


def _digest(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_app(cfg: ClusterConfig) -> Application:
    spec = cfg.engine
    # An explicit version: without one, every serve.run gets a random one and Serve
    # replaces every replica, ingress included, so `scale N` became a full rolling restart
    # (the ingress holding every call drained, N new engines loading beside the calls).
    # With it, a change of replica counts only is a lightweight in-place update. Serve
    # deprecates user versions for config-file deploys (which hash their import path and
    # args instead); `_internal` keeps that warning out of an operator's log.
    engine_version, ingress_version = cfg.versions()
    gpus = cfg.num_gpus if cfg.num_gpus is not None else (
        1.0 if spec.device.startswith("cuda") else 0.0)
    engine_opts: dict[str, Any] = dict(
        name="MoshiEngine",
        # One WebSocket call holds one lease for its life: this is the per-replica cap.
        max_ongoing_requests=spec.slots,
        graceful_shutdown_timeout_s=cfg.drain_timeout_s,
        graceful_shutdown_wait_loop_s=1.0,
        health_check_period_s=cfg.health_check_period_s,
        health_check_timeout_s=cfg.health_check_timeout_s,
        ray_actor_options={"num_gpus": gpus, "num_cpus": cfg.engine_num_cpus},
    )
    if cfg.max_replicas is not None:
        engine_opts["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
            "initial_replicas": max(cfg.min_replicas, min(cfg.replicas, cfg.max_replicas)),
            "target_ongoing_requests": cfg.target_calls or max(1.0, 0.75 * spec.slots),
            "upscale_delay_s": 10.0, "downscale_delay_s": 300.0,
        }
    else:
        engine_opts["num_replicas"] = cfg.replicas
    engine = serve.deployment(EngineReplica).options(**engine_opts, version=engine_version,
                                                     _internal=True)
    ingress = serve.deployment(Ingress).options(
        name="MoshiIngress",
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=10_000,  # WebSockets held; CPU, not this, is the limit
        graceful_shutdown_timeout_s=cfg.drain_timeout_s,
        graceful_shutdown_wait_loop_s=1.0,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        version=ingress_version, _internal=True,
    )
    app: Application = ingress.bind(engine.bind(spec, cfg.ingress.app_name), cfg.ingress)
    return app


def app_from_args(args: dict[str, Any]) -> Application:
    """Serve config-file entry point (``import_path: voice_server_moshi.cluster.app:
    app_from_args``); ``args`` are ClusterConfig fields, with ``engine`` and ``ingress``
    sub-dicts. The auth token comes from the environment (never from the config file)."""
    import os

    from ..server.auth import AUTH_ENV

    a = dict(args)
    engine = EngineSpec(**a.pop("engine", {}))
    ing = dict(a.pop("ingress", {}))
    if isinstance(ing.get("limits"), dict):  # a YAML mapping of CallLimits fields
        from ..server.limits import CallLimits

        ing["limits"] = CallLimits(**ing["limits"])
    ingress = IngressSpec(**ing)
    token = os.environ.get(AUTH_ENV) or None
    if token:
        ingress = replace(ingress, auth_token=token)
    return build_app(ClusterConfig(engine=engine, ingress=ingress, **a))

"""The production manifests under deploy/, validated offline against the schemas their
packages ship: Ray Serve's own config schema (pydantic), Kubernetes' Pod schema
(kubernetes-validate) for the RayService's pod templates and its NetworkPolicy schema for
deploy/networkpolicy.yaml; and what they open: Ray's token auth on, Ray's ports for the
cluster's own pods only, callers to Serve's port only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray.serve")

from ray.serve.schema import ServeDeploySchema

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_serve_config_is_valid_and_drains_longer_than_a_call() -> None:
    cfg = ServeDeploySchema.parse_obj(load("serve-config.yaml"))
    (app,) = cfg.applications
    assert app.import_path == "voice_server_moshi.cluster.app:app_from_args"
    engine = next(d for d in app.deployments if d.name == "MoshiEngine")
    assert engine.max_ongoing_requests == app.args["engine"]["slots"]
    assert engine.ray_actor_options.num_gpus == 1
    assert engine.graceful_shutdown_timeout_s == app.args["drain_timeout_s"] >= 3600
    assert engine.autoscaling_config["target_ongoing_requests"] < engine.max_ongoing_requests


def test_the_config_args_build_the_application() -> None:
    from ray.serve import Application

    from voice_server_moshi.cluster.app import app_from_args

    (app,) = load("serve-config.yaml")["applications"]
    assert isinstance(app_from_args(app["args"]), Application)
    with pytest.raises(TypeError):
        app_from_args({"no_such_field": 1})


def test_rayservice_carries_the_serve_config_and_valid_pod_templates() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    svc = load("rayservice.yaml")
    assert (svc["apiVersion"], svc["kind"]) == ("ray.io/v1", "RayService")
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == load("serve-config.yaml")
    cluster = svc["spec"]["rayClusterConfig"]
    drain = load("serve-config.yaml")["applications"][0]["args"]["drain_timeout_s"]
    templates = [cluster["headGroupSpec"]["template"]]
    for group in cluster["workerGroupSpecs"]:
        templates.append(group["template"])
        spec = group["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > drain
        limits = spec["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1
    for t in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
               "spec": t["spec"]}
        kv.validate(pod, kv.latest_version(), strict=True)


def test_replica_counts_scale_in_place_and_a_redeploy_rolls_only_the_engines() -> None:
    """Serve replaces a deployment's replicas when its version changes, and gives
    ``serve.run`` a random one when none is set: `scale N` then rolled everything."""
    from dataclasses import replace

    from voice_server_moshi.cluster.app import ClusterConfig, build_app
    from voice_server_moshi.cluster.engine_replica import EngineSpec

    base = ClusterConfig(replicas=2)
    engine_v, ingress_v = base.versions()
    assert replace(base, replicas=5, ingress_replicas=3).versions() == (engine_v, ingress_v)
    assert replace(base, max_replicas=8, target_calls=2.0).versions() == (engine_v, ingress_v)
    rolled = replace(base, engine=replace(base.engine, generation=1)).versions()
    assert rolled[0] != engine_v and rolled[1] == ingress_v
    other = replace(base, ingress=replace(base.ingress, instance_name="x")).versions()
    assert other[0] == engine_v and other[1] != ingress_v
    assert replace(base, engine=EngineSpec(slots=8)).versions()[0] != engine_v
    # The versions reach what serve.run sends (not a random one per run). Serve's own
    # builder, as serve.run calls it.
    from ray.serve._private.build_app import build_app as serve_build

    built = serve_build(build_app(base), name="t", make_deployment_handle=lambda d, a: None)
    versions = {d.name: d.version for d in built.deployments}
    assert versions == {"MoshiEngine": engine_v, "MoshiIngress": ingress_v}


def pod_templates(svc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = svc["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"],
            *(g["template"] for g in cluster["workerGroupSpecs"])]


def test_ray_token_auth_is_on_with_the_token_from_a_secret() -> None:
    svc = load("rayservice.yaml")
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["authOptions"]["secretName"]
    major, minor, _ = (int(x) for x in cluster["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # Ray's token authentication
    for t in pod_templates(svc):
        for c in t["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            # Nothing overrides what KubeRay sets from the Secret, and no token is inline.
            assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN" not in env
            assert all("value" not in e for n, e in env.items() if "TOKEN" in n)


def test_the_network_policy_opens_only_serves_port_to_callers() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    policy = load("networkpolicy.yaml")
    kv.validate(policy, kv.latest_version(), strict=True)
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    ours = spec["podSelector"]["matchLabels"]
    svc = load("rayservice.yaml")
    for t in pod_templates(svc):  # it selects every pod of the cluster
        assert ours.items() <= t["metadata"]["labels"].items()
    serve_port = load("serve-config.yaml")["http_options"]["port"]
    open_rules = [r for r in spec["ingress"] if "from" not in r]
    assert [r["ports"] for r in open_rules] == [[{"protocol": "TCP", "port": serve_port}]]
    for rule in spec["ingress"]:
        if "from" not in rule:
            continue
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            labels = peer["podSelector"]["matchLabels"]
            if labels == ours:  # the cluster's own pods: every port (Ray between nodes)
                assert "ports" not in rule and "namespaceSelector" not in peer
            else:  # the KubeRay operator: the dashboard and its agent, nothing else
                assert labels == {"app.kubernetes.io/name": "kuberay-operator"}
                assert sorted(p["port"] for p in rule["ports"]) == [8265, 52365]
def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_serve_deployment_and_service_are_valid_and_drain_longer_than_a_call() -> None:
    """deploy/serve-deployment.yaml: one `serve` on a GPU, probed on /healthz and /readyz,
    its token a Secret mounted as the file the image's command reads."""
    kv = pytest.importorskip("kubernetes_validate")
    docs = list(yaml.safe_load_all((DEPLOY / "serve-deployment.yaml").read_text()))
    for doc in docs:
        kv.validate(doc, kv.latest_version(), strict=True)
    deployment, service = docs
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    args = c["args"]
    assert args[0] == "serve"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(_flag(args, "max-call-s")) > 0
    token_path = Path(_flag(args, "auth-token-file"))
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (token,) = [n for n, v in volumes.items() if "secret" in v]
    assert mounts[token]["mountPath"] == str(token_path.parent) and mounts[token]["readOnly"]
    assert [i["path"] for i in volumes[token]["secret"]["items"]] == [token_path.name]
    assert not any("AUTH_TOKEN" in e["name"] for e in c.get("env", []))
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_manifests_name_the_image_the_build_script_makes() -> None:
    """build-image.sh names its image <registry>/voice-server-moshi:<version>; the
    manifests pull that (from their registry)."""
    import tomllib

    version = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["version"]
    script = (DEPLOY / "build-image.sh").read_text()
    assert 'IMAGE="${IMAGE:-localhost/voice-server-moshi:$version}"' in script
    cluster = load("rayservice.yaml")["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]]
    pods += [g["template"] for g in cluster["workerGroupSpecs"]]
    pods.append(next(yaml.safe_load_all((DEPLOY / "serve-deployment.yaml").read_text()))
                ["spec"]["template"])
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {f"registry.example.com/voice-server-moshi:{version}"}

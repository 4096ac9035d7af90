"""What `voice-server-moshi cluster --host 0.0.0.0` opens to the network, checked on the
real processes' sockets: only the callers' port (Serve's proxy) listens beyond loopback;
Ray's GCS is not reachable at the machine's own address; an engine replica's data plane
takes no connection without a lease's ticket. And `--ray-address` (Ray beyond loopback)
refuses to start without Ray's token authentication, and with it attaches to a Ray head
started as docs/security.md says. One local cluster for the module."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("moshi")

import websockets
from websockets.exceptions import ConnectionClosed

from .cluster_proc import cluster_process

TOKEN = "doors-test-token-0123456789abcdef"


def machine_address() -> str:
    """This machine's own first non-loopback IPv4 address (connecting to it reaches this
    machine only)."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    pytest.skip("this machine has no non-loopback IPv4 address")


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def listening(proc: psutil.Process) -> dict[tuple[str, int], str]:
    """(address, port) -> process name of every listening TCP socket of ``proc`` and
    every process below it (Ray's GCS, raylet, workers and replicas are all below the
    command that started them)."""
    tree = {p.pid: p for p in [proc, *proc.children(recursive=True)]}
    found: dict[tuple[str, int], str] = {}
    for pid, p in tree.items():
        try:
            conns = p.net_connections(kind="tcp")
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                found[(c.laddr.ip, c.laddr.port)] = f"{name}[{pid}]"
    return found


@dataclass
class Cluster:
    port: int
    gcs_port: int
    proc: subprocess.Popen[str]

    def capacity(self) -> dict[str, object]:
        r = httpx.get(f"http://127.0.0.1:{self.port}/capacity", timeout=10, trust_env=False)
        return dict(r.json())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("doors")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with cluster_process(["--replicas", "1", "--slots", "1", "--checkpoint", "dev",
                          "--device", "cpu", "--host", "0.0.0.0", "--port", "0",
                          "--auth-token-file", str(token_file)],
                         tmp / "stderr.log") as (info, proc):
        assert info["host"] == "0.0.0.0"
        yield Cluster(int(info["port"]), int(str(info["ray_address"]).rsplit(":", 1)[1]), proc)


@pytest.mark.slow
def test_only_the_callers_port_listens_beyond_loopback(cluster: Cluster) -> None:
    socks = listening(psutil.Process(cluster.proc.pid))
    # Ray's own services are there, all on loopback: the GCS among them.
    assert any(port == cluster.gcs_port for _, port in socks), socks
    assert len(socks) > 5, socks
    beyond = {k: v for k, v in socks.items() if not is_loopback(k[0])}
    assert {port for _, port in beyond} == {cluster.port}, beyond
    # The callers' port answers at the machine's address, with the bearer token asked.
    addr = machine_address()
    r = httpx.get(f"http://{addr}:{cluster.port}/metrics", timeout=10, trust_env=False)
    assert r.status_code == 401
    assert httpx.get(f"http://{addr}:{cluster.port}/metrics", timeout=10, trust_env=False,
                     headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.slow
def test_ray_is_not_reachable_at_the_machines_address(cluster: Cluster) -> None:
    addr = machine_address()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(
            (addr, cluster.gcs_port), timeout=5):
        pass
    # What the issue did from outside: attach a driver and run a task. It must not attach
    # (Ray retries a GCS it cannot reach for minutes: give it 15 s).
    code = ("import ray, os\n"
            f"ray.init(address='{addr}:{cluster.gcs_port}', log_to_driver=False)\n"
            "print('ATTACHED', ray.get(ray.remote(os.getpid).remote()), flush=True)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=15, env=env)
        out = done.stdout
        assert done.returncode != 0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    assert "ATTACHED" not in out


def data_plane_ports(replica_pid: int) -> list[int]:
    """The replica's listening ports that answer the data plane's ``/capacity``."""
    ports = []
    for (ip, port), _ in listening(psutil.Process(replica_pid)).items():
        if not is_loopback(ip):
            continue
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/capacity", timeout=2, trust_env=False)
            if r.status_code == 200 and "free_slots" in r.json():
                ports.append(port)
        except (httpx.HTTPError, ValueError):
            continue
    return ports


@pytest.mark.slow
async def test_a_data_plane_takes_no_connection_without_a_leases_ticket(
        cluster: Cluster) -> None:
    cap = await asyncio.to_thread(cluster.capacity)
    (rep,) = cap["replicas"]  # type: ignore[misc]
    (port,) = await asyncio.to_thread(data_plane_ports, int(rep["pid"]))
    # The data plane's hellos (docs/protocol.md, version 1): each refused with a 0x15 that
    # says why, then close 1008.
    for first, says in (({"v": 1, "call_id": "walked-in", "wait_s": 0}, "ticket only"),
                        ({"v": 1, "ticket": "forged"}, "unknown or used ticket"),
                        ({"call_id": "no-version"}, "version"), ("not json", "not JSON")):
        async with websockets.connect(f"ws://127.0.0.1:{port}/call", proxy=None) as ws:
            await ws.send(first if isinstance(first, str) else json.dumps(first))
            error = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(error, bytes) and error[:1] == b"\x15" and says in error.decode()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1008, (first, ws.close_reason)
    after = await asyncio.to_thread(cluster.capacity)
    assert after["free_slots"] == after["slots"] == 1  # no slot was taken


@pytest.mark.parametrize(("env", "args", "says"), [
    ({}, [], "--ray-auth-token-file"),
    ({"RAY_AUTH_MODE": "disabled"}, ["--ray-auth-token-file", "TOKEN"], "RAY_AUTH_MODE"),
    ({"RAY_AUTH_TOKEN": "on-the-command-line"}, ["--ray-auth-token-file", "TOKEN"],
     "RAY_AUTH_TOKEN is set"),
    ({}, ["--ray-auth-token-file", "MISSING"], "cannot read the Ray token file"),
    ({}, ["--ray-auth-token-file", "EMPTY"], "is empty"),
])
def test_ray_beyond_loopback_refuses_to_start_without_its_token(
        tmp_path: Path, env: dict[str, str], args: list[str], says: str) -> None:
    (tmp_path / "TOKEN").write_text("ray-token\n")
    (tmp_path / "EMPTY").write_text("\n")
    args = [str(tmp_path / a) if a.isupper() else a for a in args]
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    done = subprocess.run(
        [sys.executable, "-m", "voice_server_moshi.cli", "cluster", "--ray-address",
         "10.255.255.1:6379", *args], capture_output=True, text=True, timeout=60,
        env={**base, **env})
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "on-the-command-line" not in done.stderr


def test_the_ray_token_file_turns_token_auth_on_for_the_driver(tmp_path: Path) -> None:
    from voice_server_moshi.cluster.ray_auth import ray_auth_for_attach

    f = tmp_path / "ray-token"
    f.write_text("0123456789abcdef0123\n")
    f.chmod(0o644)
    env: dict[str, str] = {}
    warnings = ray_auth_for_attach(str(f), env)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(f.resolve())}
    assert len(warnings) == 1 and "readable by other users" in warnings[0]
    env = {"RAY_AUTH_TOKEN_PATH": str(f)}  # the file from the environment does too
    ray_auth_for_attach(None, env)
    assert env["RAY_AUTH_MODE"] == "token"


@contextlib.contextmanager
def ray_head_with_token(tmp: Path, token_file: Path) -> Iterator[int]:
    """`ray start --head` with Ray's token authentication (the docs/security.md recipe),
    on loopback, in its own temp dir; stopped by its own pid (never `ray stop`, which
    stops every Ray of this user on the machine). Yields the GCS port."""
    socks = [socket.socket() for _ in range(6)]
    for s in socks:  # free ports for every fixed default, beside other Rays on this machine
        s.bind(("127.0.0.1", 0))
    port, *others = (int(s.getsockname()[1]) for s in socks)
    for s in socks:
        s.close()
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--metrics-export-port", "--ray-client-server-port", "--runtime-env-agent-port")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_AUTH_TOKEN", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    log = open(tmp / "ray-head.log", "w")  # noqa: SIM115 (closed in the finally below)
    # Short: Ray's Unix socket paths under it must stay within 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="vsm-ray-", dir="/tmp")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         *(a for f, p in zip(flags, others, strict=True) for a in (f, str(p))),
         "--num-cpus", "3", "--include-dashboard", "false", "--temp-dir", ray_tmp,
         "--block"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):  # `ray start --block` says so once the head is up
            if "will now block" in (tmp / "ray-head.log").read_text() or head.poll() is not None:
                break
            time.sleep(0.25)
        assert head.poll() is None, (tmp / "ray-head.log").read_text()[-3000:]
        yield port
    finally:
        tree: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = psutil.Process(head.pid).children(recursive=True)
        head.terminate()  # --block: stops the processes it started
        try:
            head.wait(30)
        finally:
            log.close()
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_attached_to_a_ray_cluster_with_its_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "ray-token"
    token_file.write_text(secrets.token_hex(32) + "\n")
    token_file.chmod(0o600)
    with ray_head_with_token(tmp_path, token_file) as gcs_port:
        # Without the token, a driver is refused by the GCS at once.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        done = subprocess.run(
            [sys.executable, "-c", "import ray\n"
             f"ray.init(address='127.0.0.1:{gcs_port}', log_to_driver=False)\n"
             "print('ATTACHED')"], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode != 0 and "ATTACHED" not in done.stdout
        assert "Authentication token is missing or incorrect" in done.stderr
        # With it, `cluster --ray-address` deploys there and serves.
        with cluster_process(["--ray-address", f"127.0.0.1:{gcs_port}",
                              "--ray-auth-token-file", str(token_file), "--replicas", "1",
                              "--slots", "1", "--checkpoint", "dev", "--port", "0"],
                             tmp_path / "stderr.log") as (info, _):
            r = httpx.get(f"http://127.0.0.1:{info['port']}/capacity", timeout=10,
                          trust_env=False)
            assert r.json()["slots"] == 1 and r.json()["ready"]

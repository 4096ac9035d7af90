"""The container image (deploy/Dockerfile, built by deploy/build-image.sh on a Debian base
made here with debootstrap) run with podman: `serve`'s default command with the dev
checkpoint answers /readyz, a Kyutai-protocol call through the project's remote transport
gets agent audio, the process is not root, and the token used at run time (also in the
build's environment) is in no layer, no history entry and not in the container's config.

Needs root, podman, runc and debootstrap (install.sh installs them when root with apt).
CI sets VOICE_SERVER_MOSHI_REQUIRE_PODMAN=1, so there a missing tool fails instead of
skipping. The image is built once per machine state: a second run reuses the cached base,
wheelhouse and layers (docs/deployment.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.testing.calls import CallRecorder, speechlike

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Within this machine's hard limit; runc cannot raise it (crun refuses this cgroup layout).
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime=runc"]
RUN_LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
TOKEN = "vsm-canary-" + secrets.token_hex(16)
IMAGE_UID = 10001


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "podman containers need Linux"
    if os.geteuid() != 0:
        return "podman runs rootful here (root needed; rootless needs subuid ranges)"
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install podman runc debootstrap)"
    return None


def _podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    reason = _why_not()
    if reason is not None:
        if os.environ.get("VOICE_SERVER_MOSHI_REQUIRE_PODMAN") == "1":
            pytest.fail(f"the image test must run here but cannot: {reason}")
        pytest.skip(reason)
    # The run-time token is in the build's environment too: the build must not pick it up.
    env = dict(os.environ, PYTHON=sys.executable, VOICE_SERVER_MOSHI_AUTH_TOKEN=TOKEN)
    env.pop("PODMAN_ARGS", None)
    done = subprocess.run([str(REPO / "deploy" / "build-image.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-5000:]
    name, size = done.stdout.split()[-2:]
    assert int(size) > 0
    return name


@pytest.fixture(scope="module")
def served(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(container name, base URL): the image's own CMD (serve, dev checkpoint, token file)."""
    secret_dir = tmp_path_factory.mktemp("secret")
    token_file = secret_dir / "token"
    token_file.write_text(TOKEN + "\n")
    os.chown(token_file, IMAGE_UID, IMAGE_UID)
    token_file.chmod(0o400)
    name = "vsm-image-test-" + secrets.token_hex(4)
    # A named volume for /cache: podman copies the image's /cache ownership into it, as a
    # fresh Kubernetes volume with fsGroup does; the dev checkpoint is generated there.
    _podman("run", "-d", "--name", name, *RUN_LIMITS, "-p", "127.0.0.1::8998",
            "-v", f"{name}-cache:/cache",
            "-v", f"{token_file}:/run/secrets/voice-server-moshi/token:ro", image)
    try:
        port = _podman("port", name, "8998").strip().rsplit(":", 1)[-1]
        base = f"127.0.0.1:{port}"
        assert _wait_ready(name, base)["ready"] is True
        yield name, base
    finally:
        # -v: also the anonymous volume the image's VOLUME /voices made.
        _podman("rm", "-f", "-v", "-t", "5", name, check=False)
        _podman("volume", "rm", "-f", f"{name}-cache", check=False)


def _wait_ready(name: str, base: str, within_s: float = 300) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        state = _podman("inspect", "--format", "{{.State.Running}}", name).strip()
        if state != "true":
            break
        try:
            r = httpx.get(f"http://{base}/readyz", timeout=5)
            if r.status_code == 200:
                body: dict[str, object] = r.json()
                return body
        except httpx.HTTPError:
            pass
        time.sleep(1)
    logs = _podman("logs", name, check=False)
    raise AssertionError(f"serve in the container was not ready within {within_s} s:\n"
                         f"{logs[-4000:]}")


def test_serve_answers_its_probes_wants_the_token_and_is_not_root(
    served: tuple[str, str],
) -> None:
    name, base = served
    assert httpx.get(f"http://{base}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"http://{base}/readyz", timeout=5).json()["ready"] is True
    # The token from the mounted file is required, and it is the one that works.
    assert httpx.get(f"http://{base}/metrics", timeout=5).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"http://{base}/metrics", headers=auth, timeout=5).status_code == 200
    # Every process in the container runs as the image's user, not root.
    procs = _podman("top", name, "user", "args").splitlines()[1:]
    assert procs and all(line.split()[0] == "moshi" for line in procs), procs
    assert _podman("exec", name, "id", "-u").strip() == str(IMAGE_UID)
    # The image has libopus, so serve encodes through it, not sphn (ADR 0165).
    used = _podman("exec", name, "python3", "-c",
                   "from voice_server_moshi.audio.opus import encoder_name; print(encoder_name())")
    assert used.strip().startswith("libopus "), used


async def test_a_kyutai_protocol_call_through_the_container_gets_agent_audio(
    served: tuple[str, str],
) -> None:
    """The host's path: the Moshi adapter on the project's remote transport."""
    _, base = served
    adapter = MoshiAdapter(MoshiSettings(url=f"ws://{base}/api/chat", auth_token=TOKEN,
                                         connect_timeout_s=60))
    call = await CallRecorder(adapter).start()
    await call.send_realtime(speechlike(3.0))
    await call.until(lambda: call.agent_ms() >= 1000, within_s=60)
    await call.end()


def test_no_token_in_the_image_its_history_or_the_container_config(
    image: str, served: tuple[str, str],
) -> None:
    name, _ = served
    history = _podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
    assert history.strip() and TOKEN not in history
    image_config = _podman("image", "inspect", image)
    assert TOKEN not in image_config
    assert "AUTH_TOKEN" not in json.dumps(json.loads(image_config)[0]["Config"].get("Env"))
    # The token reaches serve as a file only: not in the container's env or arguments.
    assert TOKEN not in _podman("inspect", name)
    # Every layer as stored (overlay's per-layer diff directories: a file a later layer
    # deletes is still here), byte for byte. `podman save | grep` reads the same bytes,
    # 4x slower (tar and digests of 8 GB).
    layers = _podman("image", "inspect", "--format",
                     "{{.GraphDriver.Data.LowerDir}}:{{.GraphDriver.Data.UpperDir}}", image)
    dirs = [d for d in layers.strip().split(":") if d]
    assert len(dirs) >= 3 and all(Path(d).is_dir() for d in dirs), dirs
    found = subprocess.run(["grep", "-rlF", "-D", "skip", "--no-messages", TOKEN, *dirs],
                           capture_output=True, text=True, timeout=600)
    assert found.returncode == 1, f"the token is in a layer: {found.stdout[:2000]}"
    # The canary is findable where it is (the check can fail): the container's own
    # mounted token file holds it.
    assert TOKEN in _podman("exec", name, "cat", "/run/secrets/voice-server-moshi/token")

"""Kyutai's own ``moshi.server`` as a test peer: a subprocess on a free loopback port.

It runs the unmodified server from the ``moshi`` package on the dev checkpoint, on CPU,
offline (``HF_HUB_OFFLINE=1``, ``NO_TORCH_COMPILE=1``, ``--static none``); the launcher
(:data:`MOSHI_SERVER_LAUNCHER`) only neutralises
``torch.cuda.synchronize``, which its warm-up calls and which fails without CUDA.

Usage::

    with running_moshi_server() as server:
        settings = MoshiSettings(url=server.url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .._log import get_logger
from ..engine.checkpoints import CONFIG_NAME, dev_checkpoint_dir

__all__ = [
    "MOSHI_SERVER_ENV", "MoshiServer", "MoshiServerError", "free_port", "moshi_server_argv",
    "running_moshi_server", "start_moshi_server",
]

log = get_logger(__name__)

#: Loading torch and the tiny model and warming up takes ~3 s alone; the machines running
#: the tests are shared, so the bound is generous.
DEFAULT_STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0


#: A ``python -c`` launcher for Kyutai's server on a CPU-only machine: its warm-up calls
#: ``torch.cuda.synchronize()``, which fails without CUDA; nothing else is altered.
MOSHI_SERVER_LAUNCHER = (
    "import runpy, sys, torch; "
    "torch.cuda.synchronize = lambda *a, **k: None; "
    "sys.argv[0] = 'moshi.server'; "
    "runpy.run_module('moshi.server', run_name='__main__', alter_sys=True)"
)


#: Environment for Kyutai's server on CPU: no hub, no torch.compile, and one OpenMP thread
#: (with one thread per core, a loaded machine made its frames take 0.6 s instead of 10 ms).
MOSHI_SERVER_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "NO_TORCH_COMPILE": "1",
    "OMP_NUM_THREADS": "1",
}


def moshi_server_argv(checkpoint_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line that runs Kyutai's ``moshi.server`` on a checkpoint directory on
    CPU (environment: ``HF_HUB_OFFLINE=1 NO_TORCH_COMPILE=1``)."""
    d = Path(checkpoint_dir).resolve()
    return [
        sys.executable, "-c", MOSHI_SERVER_LAUNCHER,
        "--hf-repo", str(d), "--config-path", str(d / CONFIG_NAME),
        "--static", "none", "--device", "cpu", "--host", host, "--port", str(port),
    ]


class MoshiServerError(RuntimeError):
    """The server did not start (the message holds the tail of its output)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class MoshiServer:
    """A running ``moshi.server`` subprocess."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, log_path: Path):
        self.process = process
        self.host = host
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/api/chat"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output_tail(self, max_chars: int = 4000) -> str:
        """The last of what the server wrote (stdout and stderr together)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as if the machine vanished mid-call (the OS still closes its sockets)."""
        if self.alive():
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within a few seconds; removes the
        output file."""
        self._stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def _stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("moshi_server_sigkill", pid=self.pid)
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def start_moshi_server(
    checkpoint_dir: Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> MoshiServer:
    """Start the server and return once it accepts TCP connections. Raises
    :class:`MoshiServerError` with its output if it exits or does not listen in time."""

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else dev_checkpoint_dir()
    port = port or free_port(host)
    argv = moshi_server_argv(ckpt, port, host=host)
    env = dict(os.environ, **MOSHI_SERVER_ENV, PYTHONUNBUFFERED="1")
    # MOSHI_SERVER_ENV pins one OpenMP thread (on small shared machines more made single
    # frames take 0.7 to 1.7 s instead of ~20 ms); an explicit setting in the environment wins.
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    fd, name = tempfile.mkstemp(prefix=f"moshi-server-{port}-", suffix=".log")
    log_path = Path(name)
    out: IO[bytes] = os.fdopen(fd, "wb")
    try:
        # A file, not a pipe: nobody reads the server's chatter while it runs, and a full
        # pipe would block it.
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        out.close()
    server = MoshiServer(process, host, port, log_path)
    deadline = time.monotonic() + startup_timeout_s
    while True:
        if not server.alive():
            raise MoshiServerError(
                f"moshi.server exited with code {process.returncode} before listening on "
                f"{host}:{port}; its output:\n{server.output_tail()}"
            )
        if _listening(host, port):
            log.info("moshi_server_started", pid=process.pid, url=server.url)
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise MoshiServerError(
                f"moshi.server did not listen on {host}:{port} within {startup_timeout_s:g}s; "
                f"its output:\n{server.output_tail()}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def running_moshi_server(
    checkpoint_dir: Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> Iterator[MoshiServer]:
    """Kyutai's ``moshi.server`` for the duration of the block; stopped cleanly after."""
    server = start_moshi_server(
        checkpoint_dir, host=host, port=port, startup_timeout_s=startup_timeout_s
    )
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    """``python -m voice_server_moshi.testing.moshi_server [PORT]``: run Kyutai's server on the
    dev checkpoint until interrupted; prints its URL (benchmarks take it as ``--url``)."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else None
    with running_moshi_server(port=port) as server:
        sys.stdout.write(server.url + "\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            server.process.wait()


if __name__ == "__main__":
    main()

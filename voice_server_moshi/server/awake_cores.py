"""``serve --keep-cores-awake``: one SCHED_IDLE spinner process per core.

On a VM whose host parks a halted vCPU (this project's dev VM: KVM under Firecracker, the
guest's haltpoll idle driver), a tick that starts on a core idle since the last one runs
slower than the same tick back to back: at one call ``serve``'s tick matched ``bench
engine --paced``, 1.1-1.4x its back-to-back figure (ADR 0155). Holding PM QoS at 0 (the
kernel polls in its idle loop) did not help; a busy user-space loop did. The kernel runs a
SCHED_IDLE task only when nothing else on its core is runnable, so the tick, the event
loop and the clients lose nothing to it, while the vCPU never halts.

The cost: every core in the process's affinity set shows 100 % busy (power; on a shared
host, cycles another tenant could have had). A CPU quota (cgroup ``cpu.max``, CFS quota;
what a Kubernetes CPU limit sets) would be spent by the spinners and throttle ``serve``
itself, so a process under one is refused.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from .._log import get_logger

log = get_logger(__name__)

#: Where a CPU quota shows inside a container (its own cgroup is the root it sees): cgroup
#: v2's ``cpu.max`` ("max 100000": none) and cgroup v1's ``cpu.cfs_quota_us`` ("-1": none).
QUOTA_FILES = (Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
               Path("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"))

#: How long ``start`` waits for every spinner to take SCHED_IDLE before it gives up.
START_LIMIT_S = 5.0


def own_quota_files(proc_cgroup: Path = Path("/proc/self/cgroup"),
                    root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """The quota files of this process's own cgroup and every cgroup above it (a quota
    on a parent slice, such as a systemd unit's CPUQuota=, binds its children too)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    out: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if controllers == "":
            base, leaf = root, "cpu.max"
        elif "cpu" in names:
            base, leaf = root / controllers, "cpu.cfs_quota_us"
        else:
            continue
        parts = [x for x in path.split("/") if x]
        out += [base.joinpath(*parts[:i]) / leaf for i in range(len(parts), 0, -1)]
    return out


# Runs as ``python -I -S -c``: no site, no environment, so it starts in milliseconds and
# imports nothing of the caller's. PR_SET_PDEATHSIG ends it with its parent (even on
# SIGKILL); the getppid check covers a parent that died before the prctl took effect. It
# ignores SIGINT and SIGTERM, which a terminal's Ctrl-C or systemd's stop send to the
# whole group: serve stops it itself (SIGKILL) once its calls are closed. SCHED_IDLE comes
# last: `start` waits for it, so by then the spinner is pinned and named too.
_SPIN = """\
import ctypes, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
cpu, parent = int(sys.argv[1]), int(sys.argv[2])
os.sched_setaffinity(0, {cpu})
libc = ctypes.CDLL(None)
libc.prctl(1, signal.SIGKILL)
libc.prctl(15, ("awake-cpu%d" % cpu).encode())
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while os.getppid() == parent:
    for _ in range(1000000):
        pass
"""


def cpu_quota(files: Iterable[Path] | None = None) -> str | None:
    """The CPU quota this process runs under, as its file says it (``None``: none)."""
    for path in [*own_quota_files(), *QUOTA_FILES] if files is None else files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        first = text.split()[0] if text else "max"
        if first not in ("max", "-1"):
            return f"{path}: {text}"
    return None


class AwakeCores:
    """One SCHED_IDLE busy loop per core, for as long as the server runs. ``check`` before
    loading a model (fails fast); ``start`` / ``stop``, or use it as a context manager."""

    def __init__(self, cpus: Sequence[int] | None = None,
                 quota_files: Iterable[Path] | None = None) -> None:
        self.cpus = sorted(cpus if cpus is not None else self._affinity())
        self._quota_files = None if quota_files is None else tuple(quota_files)
        self._procs: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def _affinity() -> set[int]:
        if not hasattr(os, "sched_getaffinity"):
            raise ValueError("--keep-cores-awake needs Linux (SCHED_IDLE and CPU affinity)")
        return os.sched_getaffinity(0)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def check(self) -> None:
        """Raise ``ValueError`` where spinners would hurt or cannot run."""
        if not hasattr(os, "SCHED_IDLE"):
            raise ValueError("--keep-cores-awake needs Linux (SCHED_IDLE and CPU affinity)")
        if not self.cpus:
            raise ValueError("--keep-cores-awake: no CPU to keep awake")
        quota = cpu_quota(self._quota_files)
        if quota is not None:
            raise ValueError(f"--keep-cores-awake: this process runs under a CPU quota "
                             f"({quota}); the spinners would spend it and throttle serve. "
                             f"Drop the quota (for Kubernetes: no CPU limit) or the flag")

    def start(self) -> None:
        """Start the spinners and wait until each runs at idle priority (its last step:
        pinned and named before); ``OSError`` (with none left running) when one cannot."""
        self.check()
        parent = str(os.getpid())
        try:
            for cpu in self.cpus:
                self._procs.append(subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _SPIN, str(cpu), parent],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
            self._confirm()
        except OSError:
            self.stop()
            raise
        log.info("keeping cores awake", cpus=self.cpus, pids=self.pids,
                 why="a tick after an idle core runs slower on hosts that park idle vCPUs; "
                 "SCHED_IDLE spinners take only idle time (ADR 0155)")

    def _confirm(self) -> None:
        waiting = dict(zip(self.cpus, self._procs, strict=True))
        end = time.monotonic() + START_LIMIT_S
        while waiting:
            for cpu, proc in list(waiting.items()):
                if proc.poll() is not None:
                    raise OSError(f"the spinner for CPU {cpu} exited with {proc.returncode} "
                                  f"(its error is on stderr above)")
                with contextlib.suppress(OSError):
                    if os.sched_getscheduler(proc.pid) == os.SCHED_IDLE:
                        del waiting[cpu]
            if not waiting:
                return
            if time.monotonic() > end:
                raise OSError(f"spinners for CPUs {sorted(waiting)} did not take SCHED_IDLE "
                              f"within {START_LIMIT_S:g} s")
            time.sleep(0.01)

    def stop(self) -> None:
        died = [p.pid for p in self._procs if p.poll() is not None]
        if died:
            log.warning("a core-awake spinner had exited", pids=died)
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            p.wait()
        self._procs.clear()

    def __enter__(self) -> AwakeCores:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

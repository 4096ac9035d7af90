"""``serve --keep-cores-awake``: SCHED_IDLE spinners, one per core, gone with the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voice_server_moshi.server import awake_cores
from voice_server_moshi.server.awake_cores import AwakeCores, cpu_quota, own_quota_files

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], limit_s: float = 10.0) -> list[int]:
    end = time.monotonic() + limit_s
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_one_idle_priority_spinner_per_core_each_on_its_own_core(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with AwakeCores(quota_files=[tmp_path / "none"]) as awake:
        assert awake.cpus == cpus and len(awake.pids) == len(cpus)
        for cpu, pid in zip(cpus, awake.pids, strict=True):
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
            assert os.sched_getaffinity(pid) == {cpu}
            assert Path(f"/proc/{pid}/comm").read_text().strip() == f"awake-cpu{cpu}"
        pids = awake.pids
    assert awake.pids == [] and _wait_gone(pids, 1.0) == []


@pytest.mark.parametrize(("name", "text", "refused"), [
    ("cpu.max", "max 100000", False),
    ("cpu.max", "200000 100000", True),
    ("cpu.cfs_quota_us", "-1", False),
    ("cpu.cfs_quota_us", "50000", True),
])
def test_a_cpu_quota_is_refused_before_any_spinner_starts(
        tmp_path: Path, name: str, text: str, refused: bool) -> None:
    f = tmp_path / name
    f.write_text(text + "\n")
    assert (cpu_quota([tmp_path / "missing", f]) is not None) == refused
    awake = AwakeCores(cpus=[0], quota_files=[f])
    if not refused:
        awake.check()
        return
    with pytest.raises(ValueError, match=r"CPU quota .*cpu\.(max|cfs_quota_us).*throttle"):
        awake.start()
    assert awake.pids == []


def test_a_quota_on_a_parent_cgroup_is_found_from_proc_self_cgroup(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/voice.service\n")
    (tmp_path / "system.slice" / "voice.service").mkdir(parents=True)
    (tmp_path / "system.slice" / "voice.service" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "system.slice" / "cpu.max").write_text("400000 100000\n")  # CPUQuota=400%
    files = own_quota_files(proc, tmp_path)
    assert files == [tmp_path / "system.slice" / "voice.service" / "cpu.max",
                     tmp_path / "system.slice" / "cpu.max"]
    assert cpu_quota(files) == f"{tmp_path / 'system.slice' / 'cpu.max'}: 400000 100000"
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n")  # cgroup v1
    assert own_quota_files(proc, tmp_path) == [
        tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us",
        tmp_path / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us"]


def test_a_spinner_that_cannot_start_fails_start_and_leaves_none_running(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(awake_cores, "_SPIN", "import sys\nsys.exit(3)\n")
    awake = AwakeCores(quota_files=[tmp_path / "none"])
    with pytest.raises(OSError, match=r"spinner for CPU \d+ exited with 3"):
        awake.start()
    assert awake.pids == []


def test_spinners_die_with_a_parent_that_is_killed(tmp_path: Path) -> None:
    code = ("import json, sys, time\n"
            "from pathlib import Path\n"
            "from voice_server_moshi.server.awake_cores import AwakeCores\n"
            "a = AwakeCores(quota_files=[Path(sys.argv[1])])\n"
            "a.start()\n"
            "print(json.dumps(a.pids), flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "none")],
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(parent.stdout.readline())  # type: ignore[union-attr]
        assert pids and all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)  # no chance to stop them itself
        parent.wait(10)
        assert _wait_gone(pids) == []
    finally:
        parent.kill()
        parent.wait()


def test_serve_refuses_the_flag_under_a_quota_before_loading_a_model(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from voice_server_moshi.server.cli import main

    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")
    monkeypatch.setattr(awake_cores, "QUOTA_FILES", (quota,))
    # A checkpoint that does not exist: reaching the loader would say so instead.
    assert main(["--keep-cores-awake", "--checkpoint", str(tmp_path / "nope"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--keep-cores-awake: this process runs under a CPU quota" in err
    assert "could not load checkpoint" not in err


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


@pytest.mark.slow
def test_serve_with_the_flag_runs_a_spinner_per_core_and_stops_them_on_sigterm() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("moshi")
    if cpu_quota() is not None:
        pytest.skip(f"this machine runs tests under a CPU quota ({cpu_quota()}): serve refuses")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_server_moshi.cli", "serve", "--keep-cores-awake",
         "--port", "0", "--slots", "1", "--checkpoint", "dev", "--device", "cpu"],
        env=dict(os.environ, HF_HUB_OFFLINE="1", VOICE_SERVER_MOSHI_LOG_LEVEL="info"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert json.loads(line)["event"] == "listening", line
        spinners = [k for k in _children(proc.pid)
                    if Path(f"/proc/{k}/comm").read_text().startswith("awake-cpu")]
        assert len(spinners) == len(os.sched_getaffinity(proc.pid))
        # As systemd stops a service: SIGTERM to the whole group. The spinners ignore it;
        # serve stops them itself, and says nothing of a spinner that died on its own.
        for pid in (proc.pid, *spinners):
            os.kill(pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        assert _wait_gone(spinners, 1.0) == []
        err = proc.stderr.read()  # type: ignore[union-attr]
        assert "keeping cores awake" in err and "spinner had exited" not in err, err
    finally:
        proc.kill()
        proc.wait()

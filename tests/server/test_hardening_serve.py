"""The real ``voice-server-moshi serve`` command (a subprocess on loopback, dev checkpoint,
CPU) against a dead log sink, hostile clients, a process stall, and debug logging; and
checkpoints that are not safetensors (issue 10)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .test_server import Client, tone

HERE = Path(__file__).parent
TOKEN = "tok-9f2c1e7ab3d44e0c"
ONE_FRAME_S = 0.08
# How much longer a tick may run while a neighbour's abuse is parsed on the event loop.
TICK_MARGIN_S = 0.04


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    from voice_server_moshi.engine.checkpoints import make_dev_checkpoint

    d = tmp_path_factory.mktemp("harden-serve") / "dev"
    make_dev_checkpoint(d)
    return str(d)


def start_serve(ckpt: str, *extra: str, log_level: str = "info",
                stderr: object = subprocess.DEVNULL) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_server_moshi.cli", "--log-level", log_level, "serve",
         "--port", "0", "--checkpoint", ckpt, "--device", "cpu", "--greedy", *extra],
        env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,  # type: ignore[arg-type]
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=180)
    if not line or not line[0]:
        proc.kill()
        pytest.fail("serve did not print its listening line within 180 s")
    return proc, int(json.loads(line[0])["port"])


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class TimedClient(Client):
    """A Kyutai-style client that timestamps every frame it sends and every audio message
    it gets, for lag: output j answers input j + 1 (Moshi skips the first frame)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sent_at: list[float] = []
        self.got_at: list[float] = []

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for m in self.ws:
                assert isinstance(m, bytes)
                if m[0] == 1:
                    self.got_at.append(time.monotonic())
                    self.audio_msgs += 1
                    self._changed.set()
                elif m[0] == 5:
                    self.errors.append(m[1:].decode())

    async def talk(self, frames: list, pace_s: float = 0.08) -> None:  # type: ignore[type-arg]
        import sphn

        assert self.ws is not None
        writer = sphn.OpusStreamWriter(24000)
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            data = writer.append_pcm(f)
            self.sent_at.append(time.monotonic())
            await self.ws.send(b"\x01" + bytes(data))
            # Paced on the clock, not by sleeps that drift.
            await asyncio.sleep(max(0.0, t0 + (i + 1) * pace_s - time.monotonic()))

    def lags(self, dropped: int = 0) -> list[tuple[float, float]]:
        """(time, lag) per output, with ``dropped`` input frames dropped before it."""
        out = []
        for j, t in enumerate(self.got_at):
            k = j + 1 + dropped
            if k < len(self.sent_at):
                out.append((t, t - self.sent_at[k]))
        return out


async def engine_drops(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    total = 0
    for line in text.splitlines():
        if line.startswith(("moshi_engine_overruns_total ", "moshi_engine_trimmed_frames_total ")):
            total += int(float(line.split()[1]))
    return total


def closed_reasons(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        if line.startswith("moshi_server_calls_closed_total{"):
            label, value = line.split()
            out[label.split('"')[1]] = int(float(value))
    return out


async def late_ticks(http: httpx.AsyncClient) -> int:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("moshi_engine_late_ticks_total "):
            return int(float(line.split()[1]))
    return -1


@pytest.mark.slow
async def test_with_stderr_dead_no_slot_leaks_and_401_stays_401(
    ckpt: str, tmp_path: Path,
) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    proc, port = start_serve(ckpt, "--slots", "4", "--auth-token-file", str(tok),
                             stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        proc.stderr.close()  # the log collector dies: every log line now hits EPIPE
        url = f"ws://127.0.0.1:{port}/api/chat"
        with pytest.raises(InvalidStatus) as exc:
            await websockets.connect(url, proxy=None,
                                     additional_headers={"Authorization": "Bearer wrong"})
        assert exc.value.response.status_code == 401
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
            for round_ in range(2):  # every slot is used, freed and used again
                clients = [Client(f"{url}?auth_token={TOKEN}") for _ in range(4)]
                await asyncio.gather(*(c.connect() for c in clients))
                await asyncio.gather(*(c.talk(tone(i, 10)) for i, c in enumerate(clients)))
                try:
                    await asyncio.gather(*(c.wait_audio(3, limit_s=30) for c in clients))
                except TimeoutError:
                    pytest.fail(f"round {round_}: audio {[c.audio_msgs for c in clients]}, "
                                f"errors {[c.errors for c in clients]}, closes "
                                f"{[c.ws.close_code if c.ws else None for c in clients]}")
                assert all(not c.errors for c in clients), (round_, [c.errors for c in clients])
                await asyncio.gather(*(c.close() for c in clients))
                for _ in range(200):
                    if (await http.get("/capacity")).json()["free_slots"] == 4:
                        break
                    await asyncio.sleep(0.05)
                assert (await http.get("/capacity")).json()["free_slots"] == 4
            r = await http.get("/readyz")
            assert r.status_code == 200, r.text
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def served(ckpt: str) -> Iterator[int]:
    # Count-exact (every frame of the good call answered): backlog trimming off, as in the
    # other count-exact tests; a real-time client on this 2-core VM can stand one frame
    # above the target for a second and lose it to the trim (ADR 0065), attack or not.
    proc, port = start_serve(ckpt, "--slots", "4", "--trim-after-ms", "0")
    try:
        yield port
    finally:
        stop(proc)


async def _attacker(kind: str, url: str) -> asyncio.subprocess.Process:
    """An attacker process, connected and ready; write a line to its stdin to start it."""
    p = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "attackers.py"), kind, url, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert p.stdout is not None
    line = await asyncio.wait_for(p.stdout.readline(), 120)
    assert line == b"ready\n", line
    return p


async def _attack(p: asyncio.subprocess.Process) -> dict[str, object]:
    out, err = await asyncio.wait_for(p.communicate(b"go\n"), 120)
    assert out, err.decode()[-2000:]
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.slow
async def test_an_opus_bomb_and_an_error_flood_are_closed_and_cost_another_call_nothing(
    served: int,
) -> None:
    url = f"ws://127.0.0.1:{served}/api/chat"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served}", trust_env=False) as http:
        attackers = [await _attacker("bomb", url), await _attacker("flood", url)]
        drops_before = await engine_drops(http)
        good = TimedClient(url)
        await good.connect()
        n = 100  # 8 s
        talking = asyncio.create_task(good.talk(tone(3, n)))
        await asyncio.sleep(2.5)
        attack_at = time.monotonic()
        drops_at_attack = await engine_drops(http) - drops_before
        results = await asyncio.gather(*(_attack(p) for p in attackers))
        await talking
        with contextlib.suppress(TimeoutError):
            await good.wait_audio(n - 1, limit_s=5)
        await asyncio.sleep(0.3)
        drops = await engine_drops(http) - drops_before
        late = await late_ticks(http)
        closed = closed_reasons((await http.get("/metrics")).text)
        await good.close()

    lags = good.lags()
    print(f"good call: {good.audio_msgs} of {n - 1} outputs, {drops} input frames dropped "
          f"({drops_at_attack} before the attacks), "
          f"{late} late engine ticks in all; lag max {max(lag for _, lag in lags):.3f} s")
    # Both attackers were closed for their reason (a client still writing when the server
    # closes may see its connection reset, 1006, instead of the close frame).
    b, f = results
    assert b["close_code"] in (1008, 1006) and f["close_code"] in (1007, 1006), results
    assert closed.get("input_ahead_of_real_time") == 1, closed
    assert closed.get("too_many_malformed") == 1, closed
    # (Its only error may be the no-input reap after it stopped talking.)
    assert all(e.startswith("no audio for") for e in good.errors), good.errors
    if drops_at_attack:
        # Before any attack the engine already lost frames: this machine cannot run the
        # call in real time now (CPU contention), so per-frame claims cannot be checked.
        pytest.skip(f"the engine could not keep real time before the attacks "
                    f"({drops_at_attack} frames dropped, {late} late ticks): too loaded")
    # The well-behaved call lost no frame...
    assert good.audio_msgs == n - 1 and drops == 0
    # ...and its lag stayed within one frame of its own baseline. One frame is the step a
    # call takes when one of its frames misses a tick while the attackers' frames are parsed
    # (with trimming off that frame then stands); the tick that answers it also runs a few
    # ms longer under their decode work (runs here measured 18.5 -> 103.5 and 19.4 -> 117.8
    # ms), hence the margin.
    base = statistics.median(lag for t, lag in lags if t < attack_at)
    after = [lag for t, lag in lags if t >= attack_at]
    worst = sorted(after)[int(0.9 * (len(after) - 1))]
    print(f"lag baseline {base * 1000:.1f} ms, p90 after the attacks {worst * 1000:.1f} ms, "
          f"max {max(after) * 1000:.1f} ms")
    assert statistics.median(after) <= base + ONE_FRAME_S + TICK_MARGIN_S
    assert worst <= base + ONE_FRAME_S + TICK_MARGIN_S


@pytest.mark.slow
async def test_after_a_one_second_stall_lag_returns_to_baseline(ckpt: str) -> None:
    proc, port = start_serve(ckpt, "--slots", "2")
    try:
        url = f"ws://127.0.0.1:{port}/api/chat"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     trust_env=False) as http:
            c = TimedClient(url)
            await c.connect()
            n = 90  # 7.2 s: 2 s of baseline, a 1 s stall, 4 s after it
            talking = asyncio.create_task(c.talk(tone(4, n)))
            await asyncio.sleep(2.0)
            os.kill(proc.pid, signal.SIGSTOP)  # the whole server stalls for 1 s
            stalled_at = time.monotonic()
            await asyncio.sleep(1.0)
            os.kill(proc.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            await talking
            await asyncio.sleep(1.0)
            drops = await engine_drops(http)
            await c.close()
    finally:
        stop(proc)
    before = [lag for t, lag in c.lags() if t < stalled_at]
    base = statistics.median(before)
    # Outputs after the recovery answer the input `drops` frames later than without.
    recovered = [lag for t, lag in c.lags(drops) if t >= resumed_at + 1.5]
    print(f"lag baseline {base * 1000:.1f} ms; 1.5 s after the stall: median "
          f"{statistics.median(recovered) * 1000:.1f} ms over {len(recovered)} frames; "
          f"{drops} frames dropped")
    assert len(recovered) >= 10
    # Without the trim the stall's 1 s would stand for the rest of the call. With it the
    # lag comes back within two frames of the baseline: the trim leaves up to one frame
    # above the queue's target standing (ADR 0065), and the baseline itself is bimodal,
    # a frame apart, with the phase the call started in (26-30 or 101-113 ms on the 2-core
    # VM, and 150-187 ms after the stall either way: the old bound failed 2 runs in 5).
    assert statistics.median(recovered) <= base + 2 * ONE_FRAME_S + TICK_MARGIN_S


@pytest.mark.slow
async def test_no_secret_appears_in_debug_logs(ckpt: str, tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    log_path = tmp_path / "serve.log"
    guesses = [f"guess-{i}-a81d0f" for i in range(4)]
    with log_path.open("w") as log_file:
        proc, port = start_serve(ckpt, "--slots", "2", "--auth-token-file", str(tok),
                                 "--auth-max-failures", "3", log_level="debug",
                                 stderr=log_file)
        try:
            url = f"ws://127.0.0.1:{port}/api/chat"
            for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"kyutai-api-key": TOKEN}):
                c = Client(url, additional_headers=headers)
                await c.connect()
                await c.talk(tone(0, 3))
                await c.close()
            c = Client(f"{url}?auth_token={TOKEN}")
            await c.connect()
            await c.close()
            codes = []
            for i, g in enumerate(guesses):
                kw = ([{"additional_headers": {"Authorization": f"Bearer {g}"}},
                       {"additional_headers": {"kyutai-api-key": g}}, {}][i % 3])
                u = f"{url}?auth_token={g}" if i % 3 == 2 else url
                with pytest.raises(InvalidStatus) as exc:
                    await websockets.connect(u, proxy=None, **kw)  # type: ignore[arg-type]
                codes.append(exc.value.response.status_code)
            assert codes == [401, 401, 401, 429]
            await asyncio.sleep(0.5)
        finally:
            stop(proc)
    text = log_path.read_text()
    assert "< GET /api/chat" in text and "<redacted>" in text  # debug lines were written
    for secret in (TOKEN, *guesses):
        assert secret not in text, f"{secret} leaked into the log"


def test_the_auth_token_flag_warns_it_is_visible_to_other_users(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from voice_server_moshi.server.cli import main

    assert main(["--auth-token", "x", "--checkpoint", "no-such-thing", "--device", "cpu"]) == 2
    assert "/cmdline; use --auth-token-file" in capsys.readouterr().err


def _checkpoint_with_pt(src: str, dst: Path, payload: object) -> Path:
    import torch

    shutil.copytree(src, dst)
    pt = dst / "dev_moshi.pt"
    torch.save(payload, pt)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in list(cfg.items()):
        if isinstance(value, str) and value.startswith("file://"):
            cfg[key] = "file://" + str(dst / Path(value).name)
    cfg["moshi_name"] = "file://" + str(pt)
    (dst / "config.json").write_text(json.dumps(cfg))
    return pt


class _Payload:
    """Unpickling this creates a directory: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_pt_checkpoint_and_a_pickle_payload_are_refused_before_loading(
    ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from safetensors.torch import load_file

    from voice_server_moshi.engine.models import load_models
    from voice_server_moshi.engine.weights_check import UnsafeCheckpointError
    from voice_server_moshi.server.cli import main

    # Real weights, saved with torch.save: refused for what the file is, not its content.
    weights = load_file(str(Path(ckpt) / "dev_moshi.safetensors"))
    pt = _checkpoint_with_pt(ckpt, tmp_path / "pt", weights)
    with pytest.raises(UnsafeCheckpointError, match="only safetensors") as exc:
        load_models(str(tmp_path / "pt"), device="cpu")
    assert str(pt) in str(exc.value)

    # A pickle payload: `serve` refuses it with a clear error naming the file, unloaded.
    marker = tmp_path / "payload-ran"
    pt = _checkpoint_with_pt(ckpt, tmp_path / "evil", _Payload(marker))
    assert main(["--checkpoint", str(tmp_path / "evil"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "refusing to load Moshi LM weights" in err and str(pt) in err
    assert not marker.exists()

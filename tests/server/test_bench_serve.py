"""`bench serve` against a real `serve` (dev checkpoint, CPU): its JSON and where a tick's
time goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")
pytest.importorskip("sphn")

from voice_server_moshi.bench import serve as bench


@pytest.mark.slow
def test_one_real_time_call_against_a_real_serve(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    assert bench.main(["--slots", "1", "--calls", "1", "--seconds", "1.2",
                       "--ingress-workers", "0,1", "--keep-cores-awake",
                       "--warmup-seconds", "0.4", "--serve-log", str(log)]) == 0
    # Both serves' logs, at level info: a lost load can be read against its calls.
    lines = log.read_text().splitlines()
    assert sum("server listening" in x and "port=" in x for x in lines) == 1
    assert sum("ingress worker listening" in x for x in lines) == 1
    # A discarded warm-up call, then the measured one, in each layout; the worker's call
    # lines are there too: it follows serve's --log-level.
    assert sum("call started" in x for x in lines) == 4
    text = capsys.readouterr().out
    out = json.loads(text[text.index('{\n  "bench"'):])
    assert out["keep_cores_awake"] is True and out["warmup_seconds"] == 0.4
    p, w = out["points"]
    assert (p["ingress_workers"], p["slots"], p["calls"], p["run"]) == (0, 1, 1, 1)
    assert w["ingress_workers"] == 1 and not p["errors"] and not w["errors"]
    # With a worker, Opus and the protocol run in its process: its CPU is counted there
    # (serve's core-awake spinners are its children too, and never counted).
    assert p["tick_breakdown_ms"]["ingress_workers_cpu"] == 0
    assert w["tick_breakdown_ms"]["ingress_workers_cpu"] > 0 and w["serve_ticks"] > 0
    assert p["frames_sent"] == 15 and 0 < p["frames_received"] <= 14
    assert p["serve_ticks"] > 0 and p["serve_tick_mean_ms"] > 0
    b = p["tick_breakdown_ms"]
    assert b["cpu"] > 0 and b["event_loop_cpu"] > 0  # the tick thread was found by name
    assert p["engine_tick_mean_ms"] > 0
    assert p["serve_over_engine"] == pytest.approx(
        p["serve_tick_mean_ms"] / p["engine_tick_mean_ms"], rel=1e-2)
    assert p["engine_paced_tick_mean_ms"] > 0
    # What the engine did during the load, read from serve's /metrics in both layouts.
    for q in (p, w):
        ev = q["engine_events"]
        assert set(ev) == {"late_ticks", "trimmed_frames", "gc_full_collections", "gc_full_ms"}
        assert all(v is not None and v >= 0 for v in ev.values()), ev
    assert p["serve_over_engine_paced"] == pytest.approx(
        p["serve_tick_mean_ms"] / p["engine_paced_tick_mean_ms"], rel=1e-2)
    # The summary per load, over its runs (one run each here).
    assert [(x["ingress_workers"], x["slots"], x["calls"], x["runs"]) for x in out["summary"]] \
        == [(0, 1, 1, 1), (1, 1, 1, 1)]
    assert out["summary"][0]["serve_over_engine_median"] == p["serve_over_engine"]
    assert out["summary"][0]["runs_all_realtime"] == int(p["realtime_calls"] == 1)

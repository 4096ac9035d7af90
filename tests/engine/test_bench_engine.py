"""`bench engine`: its JSON, its slot search, the full-size paths."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.bench import engine as bench
from voice_server_moshi.engine.checkpoints import make_dev_checkpoint
from voice_server_moshi.engine.devcheckpoint import DEV_LM_CONFIG


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("bench") / "dev"
    make_dev_checkpoint(d)
    return str(d)


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    # Unconfigured structlog prints to stdout in tests; the JSON object starts at "{\n".
    out: dict[str, Any] = json.loads(text[text.index('{\n  "bench"'):])
    return out


def test_fixed_slot_counts_with_profile(ckpt: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, ["--checkpoint", ckpt, "--device", "cpu", "--slots", "1,2",
                       "--seconds", "0.4", "--profile"])
    assert [p["slots"] for p in out["points"]] == [1, 2]
    for p in out["points"]:
        assert 0 < p["tick_p50_ms"] <= p["tick_p99_ms"] <= p["tick_max_ms"]
        assert p["realtime_margin_ms"] == pytest.approx(80.0 - p["tick_p99_ms"], abs=1e-6)
        assert p["state_bytes_per_slot"] > 0 and p["ticks"] == 5
        # Fed in real time a call waits one frame; after a 1 s stall (12 frames at once)
        # its backlog (4 frames) is trimmed back to one frame over the target within one
        # trim window (ADR 0065 and its update): 2 frames per call.
        assert p["input_depth_max_frames"] == 1
        rec = p["stall_recovery"]
        assert rec["ticks_to_target"] == 12 and rec["trimmed_frames"] == 2 * p["slots"]
    assert out["max_realtime_slots"] in (0, 1, 2)
    assert out["profile"]["top_ops"] and out["profile"]["top_ops"][0]["op"].startswith("aten::")


def test_search_doubles_then_bisects(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def fake_measure(models: Any, slots: int, *a: Any) -> dict[str, Any]:
        seen.append(slots)
        return {"slots": slots, "realtime": slots <= 37}

    monkeypatch.setattr(bench, "measure", fake_measure)
    _, best = bench.search(None, 64, 1.0, 10.0, None, 1)
    assert best == 37
    assert seen[:7] == [1, 2, 4, 8, 16, 32, 64]  # doubling until the first miss
    assert len(seen) == len(set(seen)) <= 13  # then a bisection, each count measured once
    _, best_all = bench.search(None, 20, 1.0, 10.0, None, 1)  # everything holds up to 20
    assert best_all == 20


def test_full_size_memory_is_sized_without_allocating(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(capsys, ["--memory-only", "--context", "3000"])["full_size_memory"]
    kv = 32 * 2 * 3000 * 4096 * 2  # layers x (k, v) x steps x dim x bfloat16
    assert kv < out["state_bytes_per_slot"] < kv * 1.05
    assert 15e9 < out["weights_bytes"] < 16.5e9
    half = run(capsys, ["--memory-only", "--context", "1500"])["full_size_memory"]
    fits, fits_half = out["slots_fitting_by_memory"], half["slots_fitting_by_memory"]
    assert fits_half["H100-80GB"] > fits["H100-80GB"]


@pytest.mark.slow
def test_full_architecture_path_runs(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The full LM needs ~16 GB; the code path is the same with a small LM config in its
    # place. Mimi is the real full-size one.
    from moshi.models import loaders

    monkeypatch.setattr(loaders, "_lm_kwargs", dict(DEV_LM_CONFIG, card=2048))
    out = run(capsys, ["--architecture", "full", "--device", "cpu", "--slots", "1",
                       "--seconds", "0.24"])
    assert out["architecture"] == "full" and out["points"][0]["ticks"] == 3


def test_stt_on_reports_the_added_tick_time_and_memory(
        ckpt: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, ["--checkpoint", ckpt, "--device", "cpu", "--slots", "2",
                       "--seconds", "0.4", "--stt", "dev"])
    stt = out["stt"]
    assert stt["model"] == "stt dev" and stt["codebooks"] == 8 and stt["weights_bytes"] > 0
    [row] = stt["points"]
    assert row["slots"] == 2 and row["stt_state_bytes_per_slot"] > 0
    assert row["tick_cpu_p50_ms_with_stt"] > 0 and row["tick_cpu_p50_ms_without"] > 0
    assert row["added_cpu_p50_ms"] == pytest.approx(
        row["tick_cpu_p50_ms_with_stt"] - row["tick_cpu_p50_ms_without"], abs=1e-3)
    assert out["points"][0]["stt_state_bytes_per_slot"] == row["stt_state_bytes_per_slot"]


def test_live_calls_below_the_slot_count_step_only_their_rows(
        ckpt: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, ["--checkpoint", ckpt, "--device", "cpu", "--slots", "4",
                       "--active", "1,4,8", "--seconds", "0.4"])
    pts = {(p["slots"], p["active"]): p for p in out["points"]}
    assert set(pts) == {(4, 1), (4, 4)}  # 8 live calls do not fit 4 slots
    # Three calls left a full engine: the last one moved into row 0, one row steps.
    assert pts[4, 1]["batch_width"] == 1 and pts[4, 1]["row_moves"] == 1
    assert pts[4, 4]["batch_width"] == 4 and pts[4, 4]["row_moves"] == 0
    assert pts[4, 1]["stall_recovery"]["trimmed_frames"] == 2  # one call's backlog
    fixed = run(capsys, ["--checkpoint", ckpt, "--device", "cpu", "--slots", "4",
                         "--active", "1", "--seconds", "0.24", "--fixed-batch"])
    assert fixed["points"][0]["batch_width"] == 4  # the engine before ADR 0135
    with pytest.raises(SystemExit):
        bench.main(["--checkpoint", ckpt, "--active", "1"])  # which slot counts?


@pytest.mark.slow
def test_batched_equals_alone_with_rows_moving(capsys: pytest.CaptureFixture[str]) -> None:
    eq = run(capsys, ["--equivalence", "--device", "cpu"])["equivalence"]
    assert eq["tokens_equal"] and eq["max_abs_pcm_diff"] < 1e-5
    assert eq["row_moves"] >= 3 and eq["batch_widths"] == [1, 2, 3, 4]
    assert eq["rows_held"]["E"] == [0, 1]  # E outlived the call below it and moved down

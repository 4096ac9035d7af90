"""A call's row moves, and is snapshotted and restored, with everything it holds: Moshi's and
Mimi's streaming state, the STT row, its sampling and its steering (dev checkpoints, CPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine.call_sampling import CallSampling  # noqa: E402
from voice_server_moshi.engine.core import (  # noqa: E402
    FRAME_SAMPLES,
    Engine,
    SlotEvent,
    SlotOutput,
    SttOutput,
)

MakeEngine = Callable[[int], Engine]  # tests/engine/conftest.py's make_engine

FRAMES = 16
MOVE_AT = 6


def audio(seed: int, n: int = FRAMES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n * FRAME_SAMPLES) / 24000
    x = 0.3 * np.sin(2 * np.pi * (150 + 70 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32).reshape(n, FRAME_SAMPLES)


def trace(events: list[SlotEvent]) -> tuple[list[Any], list[Any], list[np.ndarray]]:
    outs = [e for e in events if isinstance(e, SlotOutput)]
    stt = [(e.step, e.token) for e in events if isinstance(e, SttOutput)]
    return ([(o.step, o.text_token, o.audio_tokens, o.steered_by) for o in outs], stt,
            [o.pcm for o in outs])


def run_x_in_row_3(make_engine: MakeEngine, move: bool) -> tuple[list[SlotEvent], int]:
    """Three greedy callers fill rows 0-2, call X (sampled, seeded, steered) takes row 3.
    At MOVE_AT the caller in row 0 leaves and the engine moves X, the last live row, into
    its place; without ``move`` that caller stays (silent) and X stays in row 3."""
    eng = make_engine(4)
    sampled = CallSampling(text_seed=11, audio_seed=12, text_temperature=0.9)
    others = [eng.try_open(f"o{i}", lambda e: None) for i in range(3)]
    got: list[SlotEvent] = []
    x = eng.try_open("x", got.append, sampling=sampled)
    assert x.index == 3
    frames = {s: audio(i) for i, s in enumerate([*others, x])}
    for t in range(FRAMES):
        if t == 2:
            x.steering.say_text("hello there", request_id="hi")
        if t == MOVE_AT and move:
            eng.finish(others[0])
        for s in [*others[1:], x] if t >= MOVE_AT else [*others, x]:
            s.push(frames[s][t])
        eng.tick()
    row = x.index
    # Only the live rows step (on GPU widths are rounded up to a power of two).
    assert eng._batch.width == (eng._batch.bucket(3) if move else 4)
    eng.finish(x)
    eng.tick()
    eng.detach()
    return got, row


@pytest.mark.parametrize("widths", ["every", "gpu"])
def test_a_call_moved_mid_call_says_exactly_what_it_would_have(
        make_engine: MakeEngine, widths: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if widths == "gpu":  # the GPU's power-of-two widths (an idle row inside the width)
        from voice_server_moshi.engine import batch_width, packing

        monkeypatch.setattr(packing, "buckets_for",
                            lambda n, _dev: batch_width.buckets_for(n, torch.device("cuda")))
    moved, row = run_x_in_row_3(make_engine, move=True)
    stayed, row_stayed = run_x_in_row_3(make_engine, move=False)
    assert (row, row_stayed) == (0, 3)
    a, b = trace(moved), trace(stayed)
    assert len(a[0]) == FRAMES - 1 and any(step[3] for step in a[0])  # steered frames
    assert a[0] == b[0]  # text, audio codes and steering marks, frame by frame
    assert a[1] == b[1] and a[1]  # the caller's transcript, flush included
    assert max(float(np.abs(p - q).max()) for p, q in zip(a[2], b[2], strict=True)) < 1e-4


def test_a_snapshot_restored_into_another_engine_continues_the_call(
        make_engine: MakeEngine) -> None:
    x = audio(5)
    eng = make_engine(3)
    got: list[SlotEvent] = []
    eng.try_open("pad", lambda e: None)  # the call is not in row 0
    call = eng.try_open("x", got.append)
    for t in range(FRAMES):
        if t == MOVE_AT:
            snap = eng.snapshot_row(call)
        call.push(x[t])
        eng.tick()
    eng.detach()
    assert snap.nbytes > 0 and set(snap.values) == {"sampler._applied", "stt._steps"}

    eng2 = make_engine(2)  # another slot count; the new call lands in row 0
    got2: list[SlotEvent] = []
    call2 = eng2.try_open("y", got2.append)
    eng2.restore_row(call2, snap.to("cpu"))
    for t in range(MOVE_AT, FRAMES):
        call2.push(x[t])
        eng2.tick()
    with pytest.raises(RuntimeError, match="has started"):
        eng2.restore_row(call2, snap)
    eng2.detach()
    whole, rest = trace(got), trace(got2)
    # Moshi's first frame yields nothing, so output k comes with input frame k + 1.
    assert rest[0] and [o[1:] for o in rest[0]] == [o[1:] for o in whole[0][MOVE_AT - 1:]]
    assert [tok for _, tok in rest[1]] == [tok for _, tok in whole[1][MOVE_AT:]]
    assert rest[1][0][0] == 0  # the new call's transcript counts its own frames


def test_a_snapshot_of_other_models_is_refused_and_changes_nothing(
        make_engine: MakeEngine) -> None:
    eng = make_engine(1)
    call = eng.try_open("x", lambda e: None)
    snap = eng.snapshot_row(call)
    eng.detach()
    bad = type(snap)({k: v for k, v in snap.tensors.items() if not k.startswith("stt/")},
                     snap.values)
    eng = make_engine(1)
    call = eng.try_open("y", lambda e: None)
    before = eng.snapshot_row(call)
    with pytest.raises(ValueError, match="does not fit"):
        eng.restore_row(call, bad)
    key = next(k for k in snap.tensors if k.endswith(".cache"))
    wrong = dict(snap.tensors, **{key: snap.tensors[key][..., :1]})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        eng.restore_row(call, type(snap)(wrong, snap.values))
    after = eng.snapshot_row(call)
    assert all(torch.equal(before.tensors[k], after.tensors[k]) for k in before.tensors)
    assert call._first  # still starts fresh
    eng.detach()


def test_batch_width_narrows_in_place_and_keeps_what_moshi_rebinds() -> None:
    from types import SimpleNamespace

    from voice_server_moshi.engine.batch_width import BatchWidth, buckets_for
    from voice_server_moshi.engine.row_state import RowField

    assert buckets_for(6, torch.device("cpu")) == (1, 2, 3, 4, 5, 6)
    assert buckets_for(6, torch.device("cuda")) == (1, 2, 4, 6)  # one CUDA graph each
    st = SimpleNamespace(batch_size=6, offsets=torch.arange(6), kv=torch.zeros(2, 6, 3))
    bw = BatchWidth(6, [RowField("o", st, "offsets", 0), RowField("kv", st, "kv", 1)],
                    [(st, "batch_size")], [], buckets_for(6, torch.device("cuda")))
    full_kv = st.kv
    bw.set(bw.bucket(3))
    assert (bw.width, st.batch_size, tuple(st.kv.shape)) == (4, 4, (2, 4, 3))
    st.kv[:, 1] = 7.0  # in place: lands in the full tensor
    st.offsets = st.offsets + 100  # rebound, as LMGen does with its offsets each step
    bw.set(6)
    assert st.offsets.tolist() == [100, 101, 102, 103, 4, 5]
    assert st.kv is full_kv and bool((full_kv[:, 1] == 7.0).all())
    with pytest.raises(ValueError, match="not one of"):
        bw.set(3)

"""The engine with a Kyutai STT batched beside Moshi (dev checkpoints, CPU, real moshi code)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine.call_sampling import GREEDY  # noqa: E402
from voice_server_moshi.engine.core import (  # noqa: E402
    FRAME_SAMPLES,
    Engine,
    EngineConfig,
    SlotEvent,
    SlotOutput,
    SttOutput,
)
from voice_server_moshi.engine.models import LoadedModels, load_models  # noqa: E402

MakeEngine = Callable[[int], Engine]  # tests/engine/conftest.py's make_engine

from .test_stt import caller_audio  # noqa: E402


def frames(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, FRAME_SAMPLES)


def run(eng: Engine, plan: dict[str, tuple[int, np.ndarray]], extra: int = 3
        ) -> dict[str, list[SlotEvent]]:
    """Calls join at their tick and finish (with the STT flush) after their last frame."""
    got: dict[str, list[SlotEvent]] = {k: [] for k in plan}
    slots: dict[str, Any] = {}
    ticks = max(start + len(f) for start, f in plan.values()) + extra
    for t in range(ticks):
        for name, (start, f) in plan.items():
            if t == start:
                slots[name] = eng.try_open(name, got[name].append)
            if start <= t < start + len(f):
                slots[name].push(f[t - start])
            elif t == start + len(f):
                eng.finish(slots[name])
        eng.tick()
    return got


def stt(events: list[SlotEvent]) -> list[tuple[int, int, bool]]:
    return [(e.step, e.token, e.final) for e in events if isinstance(e, SttOutput)]


def moshi(events: list[SlotEvent]) -> list[tuple[int, tuple[int, ...]]]:
    return [(e.text_token, e.audio_tokens) for e in events if isinstance(e, SlotOutput)]


def test_caller_words_batched_equal_alone_and_the_flush_ends_each_call(
        make_engine: MakeEngine) -> None:
    a = frames(caller_audio("u1", gap_s=0.2))
    b = frames(caller_audio("i2", lead_s=0.3, gap_s=0.1))
    eng = make_engine(1)
    alone_a = run(eng, {"a": (0, a)})["a"]
    alone_b = run(eng, {"b": (0, b)})["b"]
    eng.detach()
    eng = make_engine(2)
    # b joins 5 ticks after a, in the other row; a then b finish at different ticks.
    both = run(eng, {"a": (0, a), "b": (5, b)})
    eng.detach()
    assert stt(both["a"]) == stt(alone_a) and stt(both["b"]) == stt(alone_b)
    assert moshi(both["a"]) == moshi(alone_a) and moshi(both["b"]) == moshi(alone_b)
    for events, n in ((alone_a, len(a)), (alone_b, len(b))):
        outs = [e for e in events if isinstance(e, SttOutput)]
        assert outs[-1].final and sum(o.final for o in outs) == 1
        assert isinstance(events[-1], SttOutput)  # nothing after the flush
        assert [o.step for o in outs] == list(range(len(outs)))
        assert len(outs) > n  # the flush ran past the call's audio
        assert any(o.text for o in outs) and all(o.end_of_turn is not None for o in outs)


def test_a_new_call_in_a_flushing_row_starts_clean(make_engine: MakeEngine) -> None:
    a = frames(caller_audio("u3", gap_s=0.1))
    b = frames(caller_audio("u5", lead_s=0.2))
    eng = make_engine(1)
    alone_b = run(eng, {"b": (0, b)})["b"]
    # a finishes and b takes the row before the next tick: that tick flushes a, then
    # resets the row for b.
    got = run(eng, {"a": (0, a), "b": (len(a), b)})
    eng.detach()
    assert stt(got["b"]) == stt(alone_b) and moshi(got["b"]) == moshi(alone_b)
    assert stt(got["a"])[-1][2]


def test_stt_does_not_change_moshi(make_engine: MakeEngine) -> None:
    a = frames(caller_audio("i3"))
    eng = make_engine(1)
    with_stt = run(eng, {"a": (0, a)})["a"]
    eng.detach()
    plain = load_models("dev", device="cpu", dtype="float32")
    eng = Engine(plain, EngineConfig(slots=1, sampling=GREEDY, fill_after_ticks=None))
    eng.warm_up()
    without = run(eng, {"a": (0, a)})["a"]
    assert moshi(with_stt) == moshi(without) and not stt(without)


def test_a_stt_reading_more_codebooks_than_moshi_leaves_moshi_alone() -> None:
    """Kyutai's STT reads 32 Mimi codebooks, Moshi 8: the engine encodes the larger count
    and Moshi keeps the first 8, which residual quantisation leaves unchanged."""
    import json

    from moshi.models import loaders
    from moshi.models.lm import LMModel

    from voice_server_moshi.engine.checkpoints import MIMI_CONFIG_NAME, dev_checkpoint_dir
    from voice_server_moshi.engine.devstt import DEV_STT_LM_CONFIG
    from voice_server_moshi.engine.stt import SttModels

    cfg = json.loads((dev_checkpoint_dir() / MIMI_CONFIG_NAME).read_text())
    cfg["quantizer"]["n_q"] = 16
    a = frames(caller_audio("u2", gap_s=0.1))

    def moshi_models() -> LoadedModels:
        m = load_models("dev", device="cpu", dtype="float32")
        torch.manual_seed(5)
        m.mimi = loaders.get_mimi(None, cfg, device="cpu", num_codebooks=8)
        return m

    base = moshi_models()
    eng = Engine(base, EngineConfig(slots=1, sampling=GREEDY, fill_after_ticks=None))
    eng.warm_up()
    want = moshi(run(eng, {"a": (0, a)})["a"])
    m16 = moshi_models()
    torch.manual_seed(6)
    lm16 = LMModel(device="cpu", dtype=torch.float32, **{
        **DEV_STT_LM_CONFIG, "n_q": 16, "delays": [0] * 17}).eval()
    m16.stt = SttModels(lm16, None, {"audio_delay_seconds": 0.24}, {}, None, "stt 16")
    eng = Engine(m16, EngineConfig(slots=1, sampling=GREEDY, fill_after_ticks=None))
    assert eng.mimi.num_codebooks == 16 and eng.stt is not None and eng.stt.codebooks == 16
    eng.warm_up()
    got = run(eng, {"a": (0, a)})["a"]
    assert moshi(got) == want and stt(got)[-1][2]
    m16.stt = SttModels(LMModel(device="cpu", dtype=torch.float32, **{
        **DEV_STT_LM_CONFIG, "n_q": 20, "delays": [0] * 21}), None, {}, {}, None, "stt 20")
    with pytest.raises(ValueError, match="reads 20 Mimi codebooks"):
        Engine(m16, EngineConfig(slots=1))

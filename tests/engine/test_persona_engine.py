"""Persona prompts in the batch (dev-personaplex, CPU): prefill never holds up the other
calls, a prefilled row continues into the call, the cache is bounded, a model that cannot
take a persona refuses it before a slot is taken, and voice files are tensors only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine.core import (  # noqa: E402
    FRAME_SAMPLES,
    Engine,
    EngineConfig,
    SlotOutput,
)
from voice_server_moshi.engine.models import load_models  # noqa: E402
from voice_server_moshi.engine.persona import PersonaError, make_prompt  # noqa: E402
from voice_server_moshi.engine.persona_cache import PromptCache, PromptKey, PromptState  # noqa: E402
from voice_server_moshi.engine.personaplex import (  # noqa: E402
    PersonaPlexLoadError,
    agent_state_dict,
)
from voice_server_moshi.engine.voices import load_voice_pt  # noqa: E402
from voice_server_moshi.engine.weights_check import UnsafeCheckpointError  # noqa: E402

PROMPT = make_prompt("You answer for Acme. Be brief.", "VARF1")
SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.float32)


@pytest.fixture(scope="module")
def engine() -> Engine:
    eng = Engine(load_models("dev-personaplex", device="cpu", dtype="float32"),
                 EngineConfig(slots=2, warmup_ticks=0))
    eng.warm_up()
    return eng


@pytest.mark.slow
def test_prefill_never_holds_up_a_live_call(engine: Engine) -> None:
    live: list[Any] = []
    prompted: list[Any] = []
    a = engine.try_open("live", live.append)
    b = engine.try_open("prompted", prompted.append, persona=PROMPT)
    try:
        ticks = 0
        while not b.prompt_run.done.is_set():
            a.push(SILENCE)
            b.push(SILENCE)  # waits in its queue (bounded) until the prompt is in
            engine.tick()
            ticks += 1
        outs = [e for e in live if isinstance(e, SlotOutput)]
        # One output per tick, prefill or not (after LMGen's one-step output lag).
        assert len(outs) == ticks - engine.steering_spec.lag
        assert prompted == []
        steps = len(b.prompt_run.steps)
        b.push(SILENCE)
        engine.tick()
        # The prompted LM row went on from the prompt: no reset at its first frame.
        assert int(engine.lm_gen._streaming_state.offsets[b.index]) == steps + 1
        assert any(isinstance(e, SlotOutput) for e in prompted)
        assert engine.metrics().persona.prefills >= 1
        from voice_server_moshi.server.metrics import ServerCounters, render_metrics

        text = render_metrics(engine.metrics(), ServerCounters())
        assert "moshi_engine_prompt_cache_misses_total" in text
        assert "moshi_engine_prompt_prefill_steps_total" in text
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_a_cached_persona_starts_with_a_plain_call(engine: Engine) -> None:
    engine.warm(PROMPT)
    plain: list[Any] = []
    cached: list[Any] = []
    a = engine.try_open("plain", plain.append)
    b = engine.try_open("cached", cached.append, persona=PROMPT)
    first: dict[str, int] = {}
    try:
        for tick in range(1, 6):
            a.push(SILENCE)
            b.push(SILENCE)
            engine.tick()
            for name, events in (("plain", plain), ("cached", cached)):
                if name not in first and any(isinstance(e, SlotOutput) for e in events):
                    first[name] = tick
        assert b.prompt_run.cached
        # Restored before the live tick, the cached call's first frame is in this tick; its
        # row is past LMGen's start-up lag, so its first audio comes no later than a plain
        # call's (one tick sooner here).
        assert first["cached"] <= first["plain"] == 1 + engine.steering_spec.lag
    finally:
        a.close()
        b.close()


@pytest.mark.slow
async def test_a_call_closed_while_prefilling_releases_its_waiter(engine: Engine) -> None:
    slot = engine.try_open("gone", lambda _e: None,
                           persona=make_prompt("A persona nobody hears.", "NATM3"))
    engine.tick()
    assert not slot.prompt_run.done.is_set()
    slot.close()
    await engine.prompt_ready(slot)  # returns: the slot is closed
    assert engine.free_slots() == 2


def test_unknown_voice_is_refused_before_a_slot_is_taken(engine: Engine) -> None:
    with pytest.raises(PersonaError, match="unknown voice"):
        engine.try_open("x", lambda _e: None, persona=make_prompt(None, "NOBODY"))
    assert engine.free_slots() == 2


@pytest.mark.slow
def test_moshi_refuses_a_persona_with_a_reason() -> None:
    eng = Engine(load_models("dev", device="cpu", dtype="float32"),
                 EngineConfig(slots=1, warmup_ticks=0))
    with pytest.raises(PersonaError, match="not trained for persona"):
        eng.try_open("x", lambda _e: None, persona=PROMPT)
    assert eng.free_slots() == 1
    assert eng.try_open("plain", lambda _e: None).prompt_run is None


def test_cache_keeps_the_most_recent_within_its_bytes() -> None:
    cache = PromptCache(max_bytes=2 * 400)
    state = PromptState({"t": torch.zeros(100, dtype=torch.float32)}, 3)  # 400 bytes
    keys = [PromptKey("c", "NATF2", f"<system> {i} <system>") for i in range(3)]
    for k in keys:
        cache.put(k, state)
    assert cache.get(keys[0]) is None and cache.get(keys[2]) is state
    assert (cache.hits, cache.misses, cache.evictions, cache.bytes) == (1, 1, 1, 800)


def test_voice_pt_is_read_as_tensors_only(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> Any:
            return (print, ("pwned",))

    bad = tmp_path / "EVIL.pt"
    torch.save({"embeddings": torch.zeros(2, 1, 1, 8), "cache": Payload()}, bad)
    with pytest.raises(UnsafeCheckpointError, match="refusing voice prompt"):
        load_voice_pt(bad, "EVIL", 8)
    buf = io.BytesIO()
    torch.save({"embeddings": torch.zeros(2, 1, 1, 8), "cache": torch.zeros(1, 17, 4)}, buf)
    (tmp_path / "OK.pt").write_bytes(buf.getvalue())
    assert load_voice_pt(tmp_path / "OK.pt", "OK", 8).frames == 3
    with pytest.raises(PersonaError, match="another checkpoint"):
        load_voice_pt(tmp_path / "OK.pt", "OK", 16)


def test_nvidia_depth_weights_map_to_the_agent_steps() -> None:
    d = 4
    state = {
        "depformer.layers.0.self_attn.in_proj_weight": torch.arange(16 * 3 * d * d).reshape(
            16 * 3 * d, d),
        "linears.3.weight": torch.zeros(1), "linears.12.weight": torch.zeros(1),
        "depformer_emb.6.weight": torch.zeros(1), "depformer_emb.7.weight": torch.zeros(1),
        "depformer.layers.0.gating.9.linear_in.weight": torch.zeros(1),
    }
    out, dropped = agent_state_dict(state, 8)
    assert dropped == 3
    assert set(out) == {"depformer.layers.0.self_attn.in_proj_weight", "linears.3.weight",
                        "depformer_emb.6.weight"}
    assert out["depformer.layers.0.self_attn.in_proj_weight"].shape == (8 * 3 * d, d)
    with pytest.raises(PersonaPlexLoadError, match="fewer than"):
        agent_state_dict({"depformer.layers.0.self_attn.out_proj.weight":
                          torch.zeros(4 * d, d)}, 8)


@pytest.mark.slow
def test_changing_the_persona_reprompts_the_row(engine: Engine) -> None:
    first = make_prompt("You sell phones.", "NATF0")
    second = make_prompt("You sell phones.", "NATF1")
    engine.warm(second)
    out: list[Any] = []
    slot = engine.try_open("changes", out.append, persona=first)
    try:
        while not slot.prompt_run.done.is_set():
            engine.tick()
        for _ in range(4):
            slot.push(SILENCE)
            engine.tick()
        engine.change_persona(slot, second)
        slot.push(SILENCE)
        engine.tick()  # the live tick skips it (prompting); then the cache restores it
        assert slot.prompt_run.cached and slot.prompted
        steps = engine.prompt_cache.get(slot.prompt_run.key).steps
        engine.tick()
        # The old conversation is gone: the row holds the new prompt and this one frame.
        assert int(engine.lm_gen._streaming_state.offsets[slot.index]) == steps + 1
    finally:
        slot.close()

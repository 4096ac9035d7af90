"""Steering in the batched engine (ADR 0070): dev checkpoint, CPU, greedy, real LMGen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
)
from voice_server_moshi.engine.models import load_models  # noqa: E402
from voice_server_moshi.engine.steering import SteeringError  # noqa: E402
from voice_server_moshi.engine.steering_audio import clip_encoder  # noqa: E402

TEXT = "hello there, this is a test"


@pytest.fixture(scope="module")
def ckpt(dev_checkpoint: Path) -> str:
    return str(dev_checkpoint)


@pytest.fixture(scope="module")
def eng(ckpt: str) -> Iterator[Engine]:
    e = Engine(load_models(ckpt, device="cpu", dtype="float32"),
               EngineConfig(slots=2, sampling=GREEDY))
    e.warm_up()
    yield e
    e.stop()


def caller(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n * FRAME_SAMPLES) / 24000
    x = 0.2 * np.sin(2 * np.pi * (150 + 90 * seed) * t) + 0.03 * rng.standard_normal(t.size)
    return x.astype(np.float32).reshape(n, FRAME_SAMPLES)


def outputs(evs: list[SlotEvent]) -> list[SlotOutput]:
    return [e for e in evs if isinstance(e, SlotOutput)]


def expected_pieces(e: Engine, text: str) -> list[str]:
    tok = e.models.tokenizer
    out: list[str] = []
    for w in text.split():
        out += [e.models.text_piece(t) or "" for t in tok.encode(w) if t not in (0, 3)]
    return out


class Run:
    """Two calls in one batch, ticked by hand; ``actions[k]`` runs before tick k."""

    def __init__(self, e: Engine, n: int, actions: dict[int, object] | None = None,
                 steer_row: int = 0) -> None:
        self.evs: list[list[SlotEvent]] = [[], []]
        slots = [e.try_open(f"c{i}", self.evs[i].append) for i in range(2)]
        self.slot = slots[steer_row]
        inputs = [caller(1, n), caller(2, n)]
        self.ticks_before: dict[int, int] = {}
        try:
            for k in range(n):
                act = (actions or {}).get(k)
                if act is not None:
                    act(self.slot)  # type: ignore[operator]
                for s, x in zip(slots, inputs, strict=True):
                    s.push(x[k])
                e.tick()
        finally:
            for s in slots:
                s.close()
        self.out = [outputs(x) for x in self.evs]


def test_forced_text_comes_out_in_order_complete_and_within_two_steps(eng: Engine) -> None:
    ids: list[str] = []
    run = Run(eng, 50, {12: lambda s: ids.append(s.steering.say_text(TEXT))})
    steered = [o for o in run.out[0] if o.steered_by == ids[0]]
    pieces = [o.text for o in steered if o.text]
    assert pieces == expected_pieces(eng, TEXT)  # every token, in order, nothing else
    # Frame f is generated at step f; the request came before step 12.
    assert steered[0].step - 12 <= 1
    assert steered[0].text == pieces[0]
    events = [(m.status, o.step) for o in run.out[0] for m in o.steering]
    assert events == [("started", steered[0].step), ("finished", steered[-1].step + 1)]
    # Layout: an EPAD (None) starts every word after the first; pace within 5 s.
    assert sum(1 for o in steered if o.text_token == 0) == len(TEXT.split()) - 1
    assert len(steered) * 0.08 < 5.0


def test_a_concurrent_call_gets_exactly_what_it_gets_alone(eng: Engine, ckpt: str) -> None:
    steered = Run(eng, 40, {5: lambda s: s.steering.say_text(TEXT)})
    alone_eng = Engine(load_models(ckpt, device="cpu", dtype="float32"),
                       EngineConfig(slots=1, sampling=GREEDY))
    alone_eng.warm_up()
    evs: list[SlotEvent] = []
    s = alone_eng.try_open("alone", evs.append)
    for x in caller(2, 40):
        s.push(x)
        alone_eng.tick()
    alone = outputs(evs)
    other = steered.out[1]
    assert any(o.steered_by for o in steered.out[0])
    assert [o.text_token for o in other] == [o.text_token for o in alone]
    assert [o.audio_tokens for o in other] == [o.audio_tokens for o in alone]
    assert max(float(np.abs(a.pcm - b.pcm).max()) for a, b in zip(other, alone, strict=True)) < 1e-5
    assert not any(o.steered_by or o.steering for o in other)


def test_say_audio_forces_the_clips_codes_and_voices_its_round_trip(eng: Engine) -> None:
    t = np.arange(24 * FRAME_SAMPLES) / 24000
    clip = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)))
    clip = clip.astype(np.float32)
    clip[: 2 * FRAME_SAMPLES] = 0.0  # leading silence: the words start where speech does
    enc = clip_encoder(eng).encode(clip)
    assert enc.codes.shape == (8, 24) and enc.voiced == (2, 24)
    ids: list[str] = []
    run = Run(eng, 50, {10: lambda s: ids.append(
        s.steering.say_codes(enc.codes, "hello there", voiced=enc.voiced))})
    steered = [o for o in run.out[0] if o.steered_by == ids[0]]
    assert len(steered) == 24 and steered[0].step == 10
    got = np.array([o.audio_tokens for o in steered]).T
    assert np.array_equal(got, enc.codes)  # every codebook at its own delay
    assert [o.text for o in steered if o.text] == expected_pieces(eng, "hello there")
    assert steered[2].text_token == 0  # EPAD at the voiced start, frame 2
    # The caller hears Mimi's round trip of the clip once the row's decoder has settled.
    with torch.no_grad():
        ref = clip_encoder(eng)._model().decode(torch.from_numpy(enc.codes)[None])[0, 0].numpy()
    pcm = np.concatenate([o.pcm for o in steered])
    tail = slice(6 * FRAME_SAMPLES, None)
    err = float(np.sum((pcm[tail] - ref[tail]) ** 2))
    snr = 10 * np.log10(float(np.sum(ref[tail] ** 2)) / max(err, 1e-20))
    assert snr > 60.0


def test_cancel_stops_forcing_at_the_next_step_and_flushes_the_queue(eng: Engine) -> None:
    argmax: list[list[int]] = []
    eng.lm_gen.on_text_logits_hook = lambda lg: argmax.append(lg[:, 0, 0].argmax(-1).tolist())
    ids: list[str] = []
    cancelled: list[list[str]] = []
    try:
        run = Run(eng, 40, {
            5: lambda s: ids.extend([s.steering.say_text(TEXT), s.steering.say_text("a b")]),
            14: lambda s: cancelled.append(s.steering.cancel(flush=True)),
        })
    finally:
        eng.lm_gen.on_text_logits_hook = None
    assert cancelled == [ids]
    out = run.out[0]
    steered = [o.step for o in out if o.steered_by]
    assert steered == list(range(5, 14))  # generated at steps 5..13, not at 14
    own = [argmax[o.step][0] for o in out]  # what the model itself picked each step
    text = [o.text_token for o in out]
    assert any(text[f] != own[f] for f in steered)  # forcing overrode the model
    assert all(text[f] == own[f] for f in range(14, len(out)))  # then the model is free
    marks = [(m.request_id, m.status) for o in out for m in o.steering]
    assert marks == [(ids[0], "started"), (ids[1], "cancelled"), (ids[0], "cancelled")]


def test_cancel_mid_audio_finishes_the_frame_in_flight_only(eng: Engine) -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(12, 200, size=(8, 20))
    ids: list[str] = []
    run = Run(eng, 30, {
        4: lambda s: ids.append(s.steering.say_codes(codes, "")),
        10: lambda s: s.steering.cancel(),
    })
    out = run.out[0]
    steered = [o for o in out if o.steered_by]
    assert [o.step for o in steered] == list(range(4, 10))
    assert np.array_equal(np.array([o.audio_tokens for o in steered]).T, codes[:, :6])
    assert out[10].audio_tokens[1:] != tuple(codes[1:, 6])


def test_bad_requests_are_refused_and_the_call_goes_on(eng: Engine) -> None:
    evs: list[SlotEvent] = []
    s = eng.try_open("bad", evs.append)
    try:
        with pytest.raises(SteeringError, match="nothing to say"):
            s.steering.say_text("   ")
        with pytest.raises(SteeringError, match=r"\[8, N>=1\]"):
            s.steering.say_codes(np.zeros((3, 4), dtype=np.int64))
        with pytest.raises(SteeringError, match="queued"):
            for _ in range(100):
                s.steering.say_text("a")
        with pytest.raises(SteeringError, match="1-D"):
            clip_encoder(eng).encode(np.zeros((2, 10), dtype=np.float32))
        s.steering.cancel()
        for x in caller(1, 4):
            s.push(x)
            eng.tick()
        assert len(outputs(evs)) == 3
    finally:
        s.close()

"""Per-row sampling in one LMGen batch (real LMGen, dev checkpoint): seeds make a call's
stream independent of the batch; temperature 0 is LMGen's own greedy; bounds hold."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from moshi.models.lm import LMGen  # noqa: E402

from voice_server_moshi.engine.call_sampling import CallSampling  # noqa: E402
from voice_server_moshi.engine.checkpoints import dev_checkpoint_dir  # noqa: E402
from voice_server_moshi.engine.models import load_models  # noqa: E402
from voice_server_moshi.engine.row_sampler import RowSampler  # noqa: E402


@pytest.fixture(scope="module")
def lm() -> object:
    # The shared cached dev checkpoint (generated once per machine).
    return load_models(str(dev_checkpoint_dir()), device="cpu", dtype="float32").lm


def run(lm: object, rows: dict[int, CallSampling], batch: int, steps: int = 24,
        sampler: bool = True, join_at: dict[int, int] | None = None) -> torch.Tensor:
    """Outputs [steps, batch, 1 + dep_q]; row r is fed the same codes whenever it runs."""
    gen = LMGen(lm, support_out_of_sync=True, use_sampling=sampler)  # type: ignore[arg-type]
    join_at = join_at or {}
    rows = {r: rows.get(r, CallSampling(text_seed=r, audio_seed=r)) for r in range(batch)}
    m = lm  # type: ignore[assignment]
    out = torch.full((steps, batch, 1 + m.dep_q), -3, dtype=torch.long)  # type: ignore[attr-defined]
    with gen.streaming(batch):
        rs = None
        if sampler:
            rs = RowSampler(batch, torch.device("cpu"), text_pad_id=m.text_padding_token_id,  # type: ignore[attr-defined]
                            text_special_ids=(m.text_padding_token_id, m.end_of_text_padding_id,  # type: ignore[attr-defined]
                                              m.text_initial_token_id),  # type: ignore[attr-defined]
                            default=CallSampling().seeded())
        own_step = [0] * batch
        for t in range(steps):
            exec_l = [t >= join_at.get(r, 0) for r in range(batch)]
            joining = [t == join_at.get(r, 0) for r in range(batch)]
            mask = torch.tensor(exec_l)
            if any(joining):
                gen.reset_streaming(torch.tensor(joining))
                for r in range(batch):
                    if joining[r] and rs is not None:
                        rs.set_row(r, rows[r])
            gen.set_exec_mask(mask)
            n_in = m.num_codebooks - m.dep_q - 1  # type: ignore[attr-defined]
            codes = torch.stack([
                torch.randint(0, m.card, (n_in, 1),  # type: ignore[attr-defined]
                              generator=torch.Generator().manual_seed(
                                  1000 * (rows[r].text_seed or 0) + own_step[r]))
                for r in range(batch)])
            if rs is not None:
                with rs.active(mask):
                    tok = gen.step(codes)
            else:
                tok = gen.step(codes)
            for r in range(batch):
                if exec_l[r]:
                    out[own_step[r], r] = tok[r, :, 0]
                    own_step[r] += 1
    return out


A = CallSampling(text_seed=11, audio_seed=12)
B = CallSampling(text_seed=21, audio_seed=22, text_temperature=1.0, audio_topk=50)


def test_same_seed_same_stream_whatever_shares_the_batch(lm: object) -> None:
    alone = run(lm, {0: A}, batch=1)
    crowded = run(lm, {0: B, 1: A, 2: B}, batch=3, join_at={1: 5, 2: 2})
    assert torch.equal(alone[:19, 0], crowded[:19, 1])  # row 1 joined 5 steps late


def test_different_seed_gives_a_different_stream(lm: object) -> None:
    a = run(lm, {0: A}, batch=1)
    c = run(lm, {0: CallSampling(text_seed=99, audio_seed=98)}, batch=1)
    assert not torch.equal(a, c)


def test_temperature_zero_is_lmgens_greedy(lm: object) -> None:
    greedy = CallSampling(text_temperature=0.0, audio_temperature=0.0, text_seed=1, audio_seed=2)
    mine = run(lm, {0: greedy, 1: A}, batch=2)
    theirs = run(lm, {0: greedy}, batch=1, sampler=False)
    assert torch.equal(mine[:, 0], theirs[:, 0])


def test_top1_is_greedy_and_pad_bias_moves_text_to_padding(lm: object) -> None:
    top1 = CallSampling(text_topk=1, audio_topk=1, text_seed=5, audio_seed=6)
    greedy = CallSampling(text_temperature=0.0, audio_temperature=0.0, text_seed=5, audio_seed=6)
    assert torch.equal(run(lm, {0: top1}, batch=1), run(lm, {0: greedy}, batch=1))
    quiet = run(lm, {0: CallSampling(pad_mult=10.0, text_seed=5, audio_seed=6)}, batch=1)
    pad = lm.text_padding_token_id  # type: ignore[attr-defined]
    produced = quiet[:, 0, 0]
    produced = produced[produced >= 0]
    assert (produced == pad).float().mean() > 0.9


def test_repetition_penalty_changes_only_its_row(lm: object) -> None:
    plain = run(lm, {0: A, 1: A}, batch=2, steps=40)
    pen = CallSampling(text_seed=11, audio_seed=12, repetition_penalty=3.0,
                       repetition_penalty_context=64)
    mixed = run(lm, {0: pen, 1: A}, batch=2, steps=40)
    assert torch.equal(plain[:, 1], mixed[:, 1])
    assert not torch.equal(plain[:, 0, 0], mixed[:, 0, 0])


def test_samples_stay_in_the_vocabulary_and_in_top_k(lm: object) -> None:
    out = run(lm, {0: CallSampling(text_seed=3, audio_seed=4, text_temperature=2.0,
                                   audio_temperature=2.0)}, batch=1, steps=30)
    text = out[:, 0, 0]
    audio = out[:, 0, 1:]
    assert int(text.max()) < lm.text_card  # type: ignore[attr-defined]
    assert int(audio.max()) < lm.card  # type: ignore[attr-defined]

"""The prompt phases feed the LM exactly what NVIDIA's PersonaPlex code feeds, for the same
checkpoint (dev-personaplex), voice and persona: token columns, and for a ``.pt`` voice the
saved embeddings; an audio voice's codes (their Mimi and ours) and the ``.pt`` their code
saves for it. Reference recorded from their code (tests/fixtures/personaplex/record.py,
commit in the fixture); a prompt seen before is then restored, not stepped."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine.call_sampling import GREEDY  # noqa: E402
from voice_server_moshi.engine.core import Engine, EngineConfig  # noqa: E402
from voice_server_moshi.engine.devpersonaplex import DEV_PERSONAPLEX_VERSION  # noqa: E402
from voice_server_moshi.engine.models import load_models  # noqa: E402
from voice_server_moshi.engine.persona import make_prompt  # noqa: E402
from voice_server_moshi.engine.voices import save_voice_pt  # noqa: E402

FIXTURE = Path(__file__).parents[1] / "fixtures" / "personaplex" / "prompt_phases.json"
REFERENCE = json.loads(FIXTURE.read_text())
ROW = 1  # the prompted call's row; row 0 holds another call, so rows stay apart


class Recorder:
    """The LM's input columns and the main transformer's input, per step, for one row."""

    def __init__(self, lm: Any) -> None:
        self.columns: list[list[int]] = []
        self.embeddings: list[Any] = []
        original = lm.forward_text

        def forward_text(seq: Any, *a: Any, **k: Any) -> Any:
            self.columns.append(seq[ROW, :, 0].tolist())
            return original(seq, *a, **k)

        lm.forward_text = forward_text  # before the engine: LMGen binds it when streaming

    def hook(self, _m: Any, args: tuple[Any, ...]) -> None:
        self.embeddings.append(args[0][ROW, 0].float().clone())


WAV_NAME = "NATF2W"  # the audio voice, beside the .pt of the same voice


@pytest.fixture(scope="module")
def engine() -> Any:
    models = load_models("dev-personaplex", device="cpu", dtype="float32")
    wav = models.persona.voices.directory / "NATF2.wav"
    models.persona.voices.add_file(wav, models.mimi, models.lm, name=WAV_NAME)
    rec = Recorder(models.lm)
    eng = Engine(models, EngineConfig(slots=2, warmup_ticks=0,
                                      sampling=GREEDY))
    eng.warm_up()
    models.lm.transformer.register_forward_pre_hook(rec.hook)  # after the engine's own
    eng.recorder = rec
    return eng


def test_fixture_matches_this_checkpoint() -> None:
    assert REFERENCE["checkpoint"] == "dev-personaplex"
    assert REFERENCE["checkpoint_version"] == DEV_PERSONAPLEX_VERSION
    assert len(REFERENCE["commit"]) == 40


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_prompt_phases_feed_what_nvidia_feeds(engine: Any, name: str) -> None:
    case = REFERENCE["cases"][name]
    rec: Recorder = engine.recorder
    other = engine.try_open("other", lambda _e: None)  # row 0
    voice = WAV_NAME if "voice_file" in case else case["voice"]
    slot = engine.try_open(name, lambda _e: None, persona=make_prompt(case["text"], voice))
    try:
        assert slot.index == ROW
        rec.columns.clear()
        rec.embeddings.clear()
        while not slot.prompt_run.done.is_set():
            engine.tick()
        tokens = engine.models.tokenizer.encode(slot.prompt_run.key.text)
        assert tokens == case["text_tokens"]
        fed = case["fed"]
        # NVIDIA's LMGen reads column c at its step c + 1 (its first step reads nothing),
        # and the last prompt column at the call's first step: ours reads all F in F steps.
        assert len(rec.columns) == case["offset"] == len(fed) + 1
        for n, ref in enumerate(fed):
            if "tokens" in ref:
                assert rec.columns[n] == ref["tokens"], f"step {n}"
            else:
                ours = rec.embeddings[n]
                assert float(ours.sum()) == pytest.approx(ref["embedding_sum"], rel=1e-5,
                                                          abs=1e-4), f"step {n}"
                assert ours[:4].tolist() == pytest.approx(ref["embedding_head"], rel=1e-6)
        assert rec.columns[-1] == case["next_column"]
    finally:
        slot.close()
        other.close()


@pytest.mark.slow
def test_a_voice_pt_is_what_nvidias_code_saves(engine: Any) -> None:
    case = REFERENCE["cases"]["natf2_wav"]
    lm = engine.models.lm
    codes = engine.models.persona.voices.get(WAV_NAME).codes
    buf = io.BytesIO()
    save_voice_pt(buf, lm, codes)
    buf.seek(0)
    ours = torch.load(buf, weights_only=True)
    theirs = case["saved_pt"]
    assert ours["cache"].tolist() == theirs["cache"]
    emb = ours["embeddings"].reshape(ours["embeddings"].shape[0], -1)
    assert torch.allclose(emb, torch.tensor(theirs["embeddings"]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_seen_prompt_is_restored_without_a_step(engine: Any) -> None:
    case = REFERENCE["cases"]["natm0_short"]
    prompt = make_prompt(case["text"], case["voice"])
    engine.warm(prompt)
    rec: Recorder = engine.recorder
    rec.columns.clear()
    hits = engine.metrics().persona.hits
    slot = engine.try_open("again", lambda _e: None, persona=prompt)
    try:
        engine.tick()
        assert slot.prompt_run.done.is_set() and slot.prompt_run.cached
        assert rec.columns == []  # no LM step: the state came from the cache
        assert engine.metrics().persona.hits == hits + 1
    finally:
        slot.close()

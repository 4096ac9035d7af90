"""The dev checkpoint maker: loads through moshi's own loaders, is deterministic, small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from moshi.models import LMGen, loaders  # noqa: E402
from moshi.utils.compile import no_compile  # noqa: E402

from voice_server_moshi.engine import checkpoints as ck  # noqa: E402
from voice_server_moshi.engine import devcheckpoint as dev  # noqa: E402

WEIGHT_FILES = (ck.MOSHI_WEIGHTS_NAME, ck.MIMI_WEIGHTS_NAME, ck.TOKENIZER_NAME,
                ck.MIMI_CONFIG_NAME)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dev") / "ck"
    cfg = ck.make_dev_checkpoint(d, seed=0)
    assert cfg == d.resolve() / "config.json"
    return d


def test_loads_through_moshi_loaders_offline(made: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = loaders.CheckpointInfo.from_hf_repo(str(made), config_path=made / "config.json")
    mimi = info.get_mimi(device="cpu")
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    tok = info.get_text_tokenizer()
    # Moshi's geometry: 24 kHz, 12.5 Hz, 1920-sample frames, 8 + 8 streams, depformer 8.
    assert mimi.sample_rate == 24000 and mimi.frame_rate == 12.5 and mimi.frame_size == 1920
    assert (lm.n_q, lm.dep_q, mimi.num_codebooks) == (16, 8, 8)
    assert lm.card == mimi.cardinality
    assert tok.vocab_size() == lm.text_card
    # Special text ids as in Moshi's real tokenizer: PAD 3, EPAD 0.
    assert lm.text_padding_token_id == 3 and lm.end_of_text_padding_id == 0
    assert tok.id_to_piece(3) == "<pad>" and tok.id_to_piece(0) == "<unk>"

    # It runs: a few streaming steps give audio frames and in-vocabulary text tokens.
    gen = LMGen(lm, use_sampling=False)
    with mimi.streaming(1), gen.streaming(1), torch.no_grad(), no_compile():
        outs = []
        for i in range(4):
            x = 0.1 * torch.sin(torch.arange(1920) * 0.05 + i)[None, None]
            tokens = gen.step(mimi.encode(x))
            if tokens is not None:
                outs.append((tokens, mimi.decode(tokens[:, 1:])))
    assert len(outs) == 3  # the first step yields nothing (acoustic delay of 1)
    for tokens, pcm in outs:
        assert tokens.shape == (1, 9, 1)
        assert 0 <= int(tokens[0, 0, 0]) < lm.text_card
        assert pcm.shape == (1, 1, 1920) and bool(torch.isfinite(pcm).all())


def test_agent_babble_is_audible_and_comes_in_turns(made: Path) -> None:
    """The agent's decoded audio has speech-like level (not a DC offset), silence for the
    quiet codes, and stretches of each, so agent-activity detection sees turns."""
    import numpy as np

    info = loaders.CheckpointInfo.from_hf_repo(str(made), config_path=made / "config.json")
    mimi = info.get_mimi(device="cpu")
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    with torch.no_grad():
        codes = torch.full((1, 8, 16), dev.QUIET_CODES, dtype=torch.long)
        codes[0, 0, 8:] = 0  # semantic code quiet from frame 8 (acoustic ones unchanged)
        pcm = mimi.decode(codes)[0, 0].reshape(16, 1920)
    rms = pcm.pow(2).mean(1).sqrt()
    assert 0.01 < float(rms[4]) < 0.5  # audible, as speech is
    assert abs(float(pcm[4].mean())) < 0.2 * float(rms[4])  # not a DC offset
    # The decoder's causal convolutions remember ~320 ms, then the quiet code is silence
    # (>= 20 dB under the speech-like frames).
    assert float(rms[8 + 5:].max()) < float(rms[4]) / 10

    gen = LMGen(lm, temp=0.8, temp_text=0.7)
    sem, levels = [], []
    with (torch.random.fork_rng(devices=[]), mimi.streaming(1), gen.streaming(1),
          torch.no_grad(), no_compile()):
        torch.manual_seed(3)
        for i in range(200):
            t = (torch.arange(1920) + i * 1920) / 24000
            x = 0.2 * torch.sin(2 * torch.pi * 220 * t) * float((i // 40) % 2 == 0)
            tokens = gen.step(mimi.encode(x[None, None]))
            if tokens is not None:
                sem.append(int(tokens[0, 1, 0]))
                out = mimi.decode(tokens[:, 1:])[0, 0]
                levels.append(20 * np.log10(float(out.pow(2).mean().sqrt()) + 1e-9))
    quiet = [c < dev.QUIET_CODES for c in sem]
    runs: list[tuple[bool, int]] = []
    for q in quiet:
        if runs and runs[-1][0] == q:
            runs[-1] = (q, runs[-1][1] + 1)
        else:
            runs.append((q, 1))
    # Turns and pauses of seconds (12.5 frames a second), not frame-by-frame flicker.
    assert max(n for q, n in runs if q) >= 8 and max(n for q, n in runs if not q) >= 12
    assert 3 <= len(runs) <= 60
    lo, hi = np.percentile(levels, [10, 90])
    assert hi - lo >= 15, (lo, hi)  # a detector with a 12 dB threshold separates them


def test_same_seed_same_bytes_other_seed_other_bytes(made: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    other = tmp_path / "other"
    ck.make_dev_checkpoint(again, seed=0)
    ck.make_dev_checkpoint(other, seed=7)
    for name in WEIGHT_FILES:
        assert (made / name).read_bytes() == (again / name).read_bytes(), name
    w = ck.MOSHI_WEIGHTS_NAME
    assert (made / w).read_bytes() != (other / w).read_bytes()
    # config.json differs only by the directory it names.
    a = json.loads((made / "config.json").read_text())
    b = json.loads((again / "config.json").read_text())
    assert {k: v for k, v in a.items() if not k.endswith("_name")} == {
        k: v for k, v in b.items() if not k.endswith("_name")
    }
    assert a["moshi_name"] == f"file://{made.resolve() / ck.MOSHI_WEIGHTS_NAME}"


def test_bytes_do_not_depend_on_the_thread_count(made: Path) -> None:
    # The codebooks and the decoder's scale come from convolutions, whose float sums
    # depend on the thread split; the maker builds on one thread and restores the count.
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    try:
        torch.set_num_threads(other)
        mimi_bytes, lm_bytes = dev.build_weights(0)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
    assert mimi_bytes == (made / ck.MIMI_WEIGHTS_NAME).read_bytes()
    assert lm_bytes == (made / ck.MOSHI_WEIGHTS_NAME).read_bytes()


def test_small(made: Path) -> None:
    total = sum(p.stat().st_size for p in made.iterdir())
    assert total < 10 * 1024 * 1024, total


def test_refuses_a_directory_with_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ck.DevCheckpointError, match=r"precious\.txt"):
        ck.make_dev_checkpoint(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="seed"):
        ck.make_dev_checkpoint(tmp_path / "new", seed=-1)


def test_resolve_checkpoint_rejects_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ck.DevCheckpointError, match=r"no config\.json"):
        ck.resolve_checkpoint(str(tmp_path))
    with pytest.raises(ck.DevCheckpointError, match="neither"):
        ck.resolve_checkpoint("not-a-dir-nor-a-repo")


@pytest.mark.slow
def test_cache_dir_is_created_once_even_when_processes_race(tmp_path: Path) -> None:
    code = "from voice_server_moshi.engine.checkpoints import dev_checkpoint_dir as d; print(d())"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    final = tmp_path / "voice-server-moshi" / f"dev-checkpoint-v{ck.DEV_CHECKPOINT_VERSION}"
    assert set(outs) == {str(final)}
    # Complete, and no temporary directory left behind.
    assert sorted(p.name for p in (tmp_path / "voice-server-moshi").iterdir()) == [final.name]
    info = loaders.CheckpointInfo.from_hf_repo(str(final), config_path=final / "config.json")
    assert info.get_text_tokenizer().vocab_size() == dev.TEXT_CARD

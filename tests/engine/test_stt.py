"""The STT batch on the dev checkpoints, with the moshi package's real LMGen and Mimi."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.audio.resample import Resampler  # noqa: E402
from voice_server_moshi.audio.wavio import read_wav  # noqa: E402
from voice_server_moshi.bundled import bundled_clip_dir  # noqa: E402
from voice_server_moshi.engine.checkpoints import (  # noqa: E402
    dev_checkpoint_dir,
    resolve_checkpoint,
)
from voice_server_moshi.engine.devstt import (  # noqa: E402
    DELAY_FRAMES,
    dev_stt_checkpoint_dir,
)
from voice_server_moshi.engine.stt import (  # noqa: E402
    SttBatch,
    SttModels,
    SttOutput,
    check_same_codec,
    load_stt,
    silence_codes,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stt() -> SttModels:
    torch.set_num_threads(1)
    return load_stt("dev", device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def mimi() -> Any:
    return resolve_checkpoint("dev").get_mimi(device=CPU)


def caller_audio(*names: str, gap_s: float = 1.0, lead_s: float = 0.5) -> np.ndarray:
    parts = [np.zeros(int(24000 * lead_s), np.float32)]
    for n in names:
        w = read_wav(bundled_clip_dir() / f"{n}.wav")
        parts.append(np.asarray(Resampler(w.sample_rate, 24000).process(w.samples[:, 0]),
                                np.float32))
        parts.append(np.zeros(int(24000 * gap_s), np.float32))
    x = np.concatenate(parts)
    return x[: len(x) // 1920 * 1920]


def encode(mimi: Any, x: np.ndarray) -> Any:
    frames = torch.from_numpy(x).view(-1, 1920)
    with torch.no_grad(), mimi.streaming(1):
        return torch.cat([mimi.encode(f[None, None]) for f in frames], dim=-1)  # [1, K, T]


def run(batch: SttBatch, schedule: dict[int, Any], ticks: int) -> dict[int, list[SttOutput]]:
    """Feed row -> codes [1, K, T] (None entries in a row's list: idle that tick)."""
    out: dict[int, list[SttOutput]] = {r: [] for r in schedule}
    pos = dict.fromkeys(schedule, 0)
    k = batch.codebooks
    with torch.no_grad():
        for t in range(ticks):
            codes = torch.zeros(batch.batch, k, 1, dtype=torch.long)
            exec_l = [False] * batch.batch
            first_l = [False] * batch.batch
            for r, (start, idle, c) in schedule.items():
                if t < start or t in idle or pos[r] >= c.shape[2]:
                    continue
                codes[r] = c[0, :k, pos[r]:pos[r] + 1]
                exec_l[r] = True
                first_l[r] = pos[r] == 0
                pos[r] += 1
            res = batch.step(codes, torch.tensor(exec_l), torch.tensor(first_l))
            for r in schedule:
                if res[r] is not None:
                    out[r].append(res[r])
        for r, outs in batch.flush(list(schedule)).items():
            out[r] += outs
    return out


def test_dev_stt_checkpoint_loads_through_moshi_loaders(stt: SttModels) -> None:
    from moshi.models import loaders

    d = dev_stt_checkpoint_dir()
    info = loaders.CheckpointInfo.from_hf_repo(str(d), config_path=d / "config.json")
    assert info.model_type == "stt"
    assert info.stt_config["audio_delay_seconds"] >= DELAY_FRAMES * 0.08
    assert stt.lm.dep_q == 0 and stt.codebooks == 8 and len(stt.lm.extra_heads) == 4


def test_shares_the_dev_moshi_codec(stt: SttModels, mimi: Any) -> None:
    check_same_codec(stt, mimi)  # same bytes: no error
    with torch.no_grad():
        mimi.quantizer.rvq_first.output_proj.weight.mul_(1.0001)
    try:
        with pytest.raises(ValueError, match="differ"):
            check_same_codec(stt, mimi)
    finally:
        with torch.no_grad():
            mimi.quantizer.rvq_first.output_proj.weight.div_(1.0001)


def test_load_stt_refuses_a_moshi_checkpoint() -> None:
    with pytest.raises(ValueError, match="speech-to-text"):
        load_stt(str(dev_checkpoint_dir()), device=CPU, dtype=torch.float32)


def test_words_follow_speech_by_the_delay_and_the_flush_brings_the_last(
        stt: SttModels, mimi: Any) -> None:
    x = caller_audio("u1", "u3", gap_s=1.5)
    codes = encode(mimi, x)
    level = 10 * np.log10((x.reshape(-1, 1920) ** 2).mean(axis=1) + 1e-12)
    speech = np.nonzero(level > -45)[0]
    batch = SttBatch(stt, 1, silence_codes(mimi, 8, CPU))
    outs = run(batch, {0: (0, set(), codes)}, codes.shape[2])[0]
    words = [o for o in outs if o.text]
    assert len(words) >= 5
    first, last = int(speech[0]), int(speech[-1])
    for o in words:  # every piece within the caller's speech plus the model's delay
        assert first <= o.step <= last + DELAY_FRAMES + 2, (o, first, last)
    # Audio ends right after the speech: the last pieces come out in the flush.
    cut = (last + 2)
    batch.reset_all()
    outs = run(batch, {0: (0, set(), codes[:, :, :cut])}, cut)[0]
    flushed = [o for o in outs if o.step >= cut]
    assert any(o.text for o in flushed), "the flush produced no words"
    assert flushed[-1].final and sum(o.final for o in outs) == 1
    assert batch.has_heads and all(o.end_of_turn is not None for o in outs)
    batch.close()


def test_batched_equals_alone(stt: SttModels, mimi: Any) -> None:
    a = encode(mimi, caller_audio("u2"))
    b = encode(mimi, caller_audio("i1", lead_s=0.2))
    sil = silence_codes(mimi, 8, CPU)

    def once(n: int, schedule: dict[int, Any], ticks: int) -> dict[int, list[SttOutput]]:
        batch = SttBatch(stt, n, sil)
        try:
            return run(batch, schedule, ticks)
        finally:
            batch.close()

    alone_a = once(1, {0: (0, set(), a)}, a.shape[2])[0]
    alone_b = once(1, {0: (0, set(), b)}, b.shape[2])[0]
    # In a batch of 3: b joins 7 ticks late and idles on some ticks; row 1 stays empty.
    both = once(3, {0: (0, set(), a), 2: (7, {9, 10, 20}, b)}, a.shape[2] + b.shape[2] + 12)
    assert [(o.step, o.token) for o in both[0]] == [(o.step, o.token) for o in alone_a]
    assert [(o.step, o.token) for o in both[2]] == [(o.step, o.token) for o in alone_b]
    assert any(o.text for o in alone_b)


def test_standalone_transcriber_matches_the_batch(stt: SttModels, mimi: Any) -> None:
    from voice_server_moshi.moshi.transcriber import Transcriber

    x = caller_audio("u4", gap_s=0.3)
    codes = encode(mimi, x)
    batch = SttBatch(stt, 1, silence_codes(mimi, 8, CPU))
    try:
        want = run(batch, {0: (0, set(), codes)}, codes.shape[2])[0]
    finally:
        batch.close()
    tr = Transcriber("dev", device="cpu", dtype="float32")
    got = []
    for i in range(0, len(x), 700):  # odd chunk sizes: it frames them itself
        got += tr.feed(x[i:i + 700])
    got += tr.finish()
    assert [(o.step, o.token, o.final) for o in got] == [(o.step, o.token, o.final) for o in want]
    words = tr.words(got)
    assert words and all(w.role == "caller" for w in words) and words[-1].final
    assert tr.finish() == []
    with pytest.raises(RuntimeError):
        tr.feed(x[:1920])

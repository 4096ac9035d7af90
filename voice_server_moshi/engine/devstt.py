"""The dev STT checkpoint: a tiny Kyutai-STT-shaped checkpoint made on the spot.

It has the structure of Kyutai's streaming speech-to-text models (``model_type = "stt"``,
no depformer, the caller's audio codebooks in, one text stream out, ``stt_config`` with an
audio delay and a silence prefix, four extra end-of-turn heads) at a fraction of the size,
and it shares the dev Moshi checkpoint's Mimi and tokenizer (copied here, byte for byte),
so the engine can feed it the Mimi codes it already encodes for Moshi. It loads through the
``moshi`` package's own ``CheckpointInfo.from_hf_repo`` with no network.

What it writes is **babble**, but babble that follows the caller: a random LM, with one
circuit wired in by hand (:func:`_wire_listener`): a per-code voice score, counted on this
package's corpus clips against silence and line noise (a naive-Bayes voice detector over the
caller's codebooks), drives the PAD logit and the end-of-turn head. So it writes PAD in
silence and word pieces while the caller speaks, ``DELAY_FRAMES`` frames late (through the
LM's own ``delays``). Plumbing, tests and benchmarks only, never transcription quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .checkpoints import (
    CONFIG_NAME,
    DEV_CHECKPOINT_VERSION,
    MIMI_CONFIG_NAME,
    MIMI_WEIGHTS_NAME,
    TOKENIZER_NAME,
    DevCheckpointError,
    cache_root,
    dev_checkpoint_dir,
    fill_cache_atomically,
)
from .devcheckpoint import AUDIO_CARD, TEXT_CARD, _state_bytes

#: Bump when the files change, so caches are rebuilt. The directory name also carries the
#: dev Moshi version whose Mimi and tokenizer it copies.
DEV_STT_VERSION = 1
STT_WEIGHTS_NAME = "dev_stt.safetensors"
README_NAME = "README.txt"

#: Half the audio delay, in frames: the LM reads each audio frame this many steps late,
#: and LMGen returns text this many steps after sampling it (``delays``), 2x in all.
HALF_DELAY_FRAMES = 3
DELAY_FRAMES = 2 * HALF_DELAY_FRAMES
#: What the config tells a runner (Kyutai's keys): flush at least the delay at call end.
DEV_STT_CONFIG: dict[str, float] = {
    "audio_delay_seconds": 0.5,  # >= DELAY_FRAMES * 80 ms
    "audio_silence_prefix_seconds": 0.24,  # 3 frames, so the prefix path is exercised
}
#: Extra heads as in kyutai/stt-1b-en_fr: 4 heads of 6 classes; Kyutai reads head 2,
#: class 0 as "the turn has ended". Here every head follows the wired voice score.
EXTRA_HEADS = 4
END_OF_TURN_HEAD = 2

N_Q = 8
DEV_STT_LM_CONFIG: dict[str, Any] = {
    "dim": 64,
    "text_card": TEXT_CARD,
    "existing_text_padding_id": 3,
    "n_q": N_Q,
    "dep_q": 0,
    "card": AUDIO_CARD,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 750,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "delays": [0] + [HALF_DELAY_FRAMES] * N_Q,
    "extra_heads_num_heads": EXTRA_HEADS,
    "extra_heads_dim": 6,
}

#: Frames louder than this (dBFS, 80 ms at 24 kHz) count as voice when scoring codes,
#: quieter than ``_QUIET_DB`` as silence; in between is not used.
_VOICE_DB = -40.0
_QUIET_DB = -55.0
#: Score (sum of log-likelihood ratios over the codebooks) above which a frame is voice.
#: High on purpose: a word invented in silence is worse than a short word missed.
_THRESHOLD = 8.0
#: Residual-stream scale of the score channel, and the logit gain it drives.
_SCALE = 0.05
_GAIN = 60.0


def _caller_stream() -> Any:
    """The corpus's caller clips at 24 kHz, each followed by 1 s of silence, as one
    float32 stream (a call's worth of turns and pauses)."""
    import numpy as np

    from ..audio.resample import Resampler
    from ..audio.wavio import read_wav
    from ..bundled import bundled_clip_dir

    parts = []
    for p in sorted(bundled_clip_dir().glob("*.wav")):
        if p.name.startswith("a"):
            continue  # agent clips: the STT listens to the caller
        w = read_wav(p)
        parts.append(np.asarray(Resampler(w.sample_rate, 24000).process(w.samples[:, 0]),
                                np.float32))
        parts.append(np.zeros(24000, np.float32))
    return np.concatenate(parts)


def _code_scores(mimi: Any) -> Any:
    """Per codebook and code, log P(code | voice) - log P(code | quiet) (add-1/2 smoothing;
    0 for a code never seen), counted over the caller stream and over silence, each clean and
    under -60 dBFS noise, frames labelled by the clean level. [N_Q, card + 1]; the last column
    (LMGen's initial token, before anything is heard) is strongly quiet."""
    import numpy as np
    import torch

    call = _caller_stream()
    noise = np.random.default_rng(7).standard_normal(len(call)).astype(np.float32)
    quiet_s = np.zeros(24000 * 2, np.float32)  # a fresh stream's first codes are quiet too
    voice = torch.zeros(N_Q, AUDIO_CARD + 1)
    quiet = torch.zeros(N_Q, AUDIO_CARD + 1)
    rows = torch.arange(N_Q)
    streams = ((call, call), (call, call + noise * 10 ** (-60 / 20)), (quiet_s, quiet_s),
               (quiet_s, quiet_s + noise[: len(quiet_s)] * 10 ** (-60 / 20)))
    with torch.no_grad():
        for clean, heard in streams:
            n = len(clean) // 1920
            level = torch.from_numpy(clean[: n * 1920]).view(n, 1920).pow(2).mean(dim=1)
            db = 10 * torch.log10(level + 1e-12)
            frames = torch.from_numpy(np.ascontiguousarray(heard[: n * 1920])).view(n, 1920)
            with mimi.streaming(1):
                codes = torch.cat([mimi.encode(f[None, None]) for f in frames], dim=-1)[0]
            for t in range(n):
                if db[t] > _VOICE_DB:
                    voice[rows, codes[:, t]] += 1
                elif db[t] < _QUIET_DB:
                    quiet[rows, codes[:, t]] += 1
    card = AUDIO_CARD + 1
    scores = (((voice + 0.5) / (voice.sum(1, keepdim=True) + 0.5 * card)).log()
              - ((quiet + 0.5) / (quiet.sum(1, keepdim=True) + 0.5 * card)).log())
    scores[(voice + quiet) == 0] = 0.0
    scores[:, AUDIO_CARD] = -8.0  # the initial token: nothing heard yet
    return scores


def _wire_listener(lm: Any, scores: Any) -> None:
    """Channel 0 of the residual stream carries the frame's voice score (the embeddings of
    the caller's codes write it), channel 1 a constant (every text embedding writes it);
    no transformer layer writes either. After the final RMS norm both scale alike, so
    ``ch0 - threshold * ch1`` keeps its sign: the PAD logit gets ``-gain`` times it (PAD in
    silence, never in voice), and each end-of-turn head's class 0 gets ``+gain`` times it."""
    import torch

    with torch.no_grad():
        for k, emb in enumerate(lm.emb):
            emb.weight[:, :2] = 0.0
            emb.weight[:, 0] = _SCALE * scores[k].clamp(-8.0, 8.0)
        lm.text_emb.weight[:, 0] = 0.0
        lm.text_emb.weight[:, 1] = _SCALE
        for layer in lm.transformer.layers:
            layer.self_attn.out_projs[0].weight[:2, :] = 0.0
            layer.gating.linear_out.weight[:2, :] = 0.0
        direction = torch.zeros(lm.dim)
        direction[0], direction[1] = 1.0, -_THRESHOLD
        pad = lm.existing_text_padding_id
        lm.text_linear.weight[:, :2] = 0.0
        lm.text_linear.weight[pad] = -_GAIN * direction
        for head in lm.extra_heads:
            head.weight[:, :2] = 0.0
            head.weight[0] = -_GAIN * direction


def _build_weights(mimi_file: Path, mimi_config: dict[str, Any], seed: int) -> bytes:
    import torch
    from moshi.models import loaders
    from moshi.models.lm import LMModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same bytes whatever the machine (see the dev Moshi maker)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 11)
            mimi = loaders.get_mimi(mimi_file, mimi_config, device="cpu", num_codebooks=N_Q)
            scores = _code_scores(mimi)
            lm = LMModel(device="cpu", dtype=torch.float32, **DEV_STT_LM_CONFIG)
            _wire_listener(lm, scores)
            return _state_bytes(lm.state_dict())
    finally:
        torch.set_num_threads(threads)


def _config(final_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "moshi_name": f"file://{final_dir / STT_WEIGHTS_NAME}",
        "mimi_name": f"file://{final_dir / MIMI_WEIGHTS_NAME}",
        "mimi_config_name": f"file://{final_dir / MIMI_CONFIG_NAME}",
        "tokenizer_name": f"file://{final_dir / TOKENIZER_NAME}",
        "model_type": "stt",
        "stt_config": dict(DEV_STT_CONFIG),
        "lm_gen_config": {"temp": 0.0, "temp_text": 0.0},
    }
    cfg.update(DEV_STT_LM_CONFIG)
    return cfg


_README = """\
voice-server-moshi dev STT checkpoint (version {version}, seed {seed})

A tiny Kyutai-STT-shaped checkpoint. Random weights plus one hand-wired circuit: it writes
PAD in silence and babble while the caller speaks, {delay} frames late. It shares the dev
Moshi checkpoint's Mimi and tokenizer. For plumbing, tests and benchmarks only.

    CheckpointInfo.from_hf_repo("{dir}", config_path="{dir}/config.json")
"""


def _write_files(target: Path, final_dir: Path, seed: int) -> None:
    moshi_dir = dev_checkpoint_dir()
    for name in (MIMI_WEIGHTS_NAME, MIMI_CONFIG_NAME, TOKENIZER_NAME):
        shutil.copyfile(moshi_dir / name, target / name)
    mimi_config = json.loads((target / MIMI_CONFIG_NAME).read_text())
    (target / STT_WEIGHTS_NAME).write_bytes(
        _build_weights(target / MIMI_WEIGHTS_NAME, mimi_config, seed))
    (target / README_NAME).write_text(
        _README.format(version=DEV_STT_VERSION, seed=seed, dir=final_dir, delay=DELAY_FRAMES))
    # config.json last: its presence marks a complete checkpoint.
    (target / CONFIG_NAME).write_text(json.dumps(_config(final_dir), indent=2, sort_keys=True))


_FILES = (CONFIG_NAME, STT_WEIGHTS_NAME, MIMI_WEIGHTS_NAME, MIMI_CONFIG_NAME, TOKENIZER_NAME)


def _is_complete(directory: Path) -> bool:
    return all((directory / n).is_file() for n in _FILES)


def make_dev_stt_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Write the dev STT checkpoint into ``directory`` (empty, missing, or an earlier dev
    STT checkpoint) and return its ``config.json`` path."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    directory = Path(directory).expanduser().resolve()
    if directory.exists():
        ours = {*_FILES, README_NAME}
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in ours)
        if foreign:
            raise DevCheckpointError(
                f"{directory} holds files that are not a dev STT checkpoint "
                f"({', '.join(foreign)}); choose an empty or new directory")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).unlink(missing_ok=True)
    _write_files(directory, directory, seed)
    return directory / CONFIG_NAME


def dev_stt_checkpoint_dir() -> Path:
    """Get or create the shared dev STT checkpoint (seed 0) in the user cache; atomic like
    the dev Moshi one (a temporary sibling renamed into place)."""
    final = cache_root() / f"dev-stt-checkpoint-v{DEV_STT_VERSION}-m{DEV_CHECKPOINT_VERSION}"
    return fill_cache_atomically(final, _write_files, _is_complete, "dev STT checkpoint")

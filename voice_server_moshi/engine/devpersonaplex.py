"""``dev-personaplex``: a tiny random checkpoint of PersonaPlex's shape, with voices.

Like the dev checkpoint (:mod:`.devcheckpoint`, it babbles), but laid out as NVIDIA's
``nvidia/personaplex-7b-v1`` is: the depth transformer has 16 steps (agent and user
streams, NVIDIA's ``dep_q = 16``), attention weights under the fused names NVIDIA's
``LMModel`` saves (``in_proj_weight``, ``out_proj.weight``), audio codebooks of 2048 (so
NVIDIA's silence and sine codes are valid), and a ``voices/`` directory with a voice per
name NVIDIA ships (``NATF0`` .. ``VARM4``): a ``.pt`` file in NVIDIA's format (the input
embeddings and cache their ``save_voice_prompt_embeddings`` writes) and the ``.wav`` it was
computed from. NVIDIA's own loader and ``LMGen`` read it (the fixture recorder does).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .devcheckpoint import (
    DEV_LM_CONFIG,
    DEV_MIMI_CONFIG,
    MIMI_CONFIG_NAME,
    MIMI_WEIGHTS_NAME,
    MOSHI_WEIGHTS_NAME,
    TEXT_CARD,
    TOKENIZER_NAME,
    _state_bytes,
    build_models,
    train_tokenizer,
)
from .persona import NVIDIA_VOICES
from .personaplex import PERSONAPLEX_JSON, load_personaplex_lm

#: Bump when the files written change, so caches are rebuilt.
DEV_PERSONAPLEX_VERSION = 1
#: NVIDIA's codebook size: their silence and sine constants index it.
PERSONAPLEX_CARD = 2048
#: NVIDIA's depth transformer covers the user stream too (their loader's ``dep_q = 16``).
NVIDIA_DEP_Q = 16
#: Seconds of each generated voice (NVIDIA's are a few seconds of speech).
VOICE_SECONDS = 1.6

DEV_PP_MIMI_CONFIG: dict[str, Any] = {
    **DEV_MIMI_CONFIG,
    "quantizer": {**DEV_MIMI_CONFIG["quantizer"], "bins": PERSONAPLEX_CARD},
}
#: What the engine builds (the agent's 8 depth steps); the weights hold NVIDIA's 16.
DEV_PP_LM_CONFIG: dict[str, Any] = {**DEV_LM_CONFIG, "card": PERSONAPLEX_CARD}

VOICES_DIR = "voices"


def legacy_names(state: dict[str, Any]) -> dict[str, Any]:
    """``in_projs.{i}.weight`` / ``out_projs.{i}.weight`` fused back into NVIDIA's (and the
    released Moshi files') ``in_proj_weight`` / ``out_proj.weight``, steps stacked in order."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, list[tuple[int, Any]]] = {}
    for key, value in state.items():
        for part, name in ((".in_projs.", "in_proj_weight"), (".out_projs.", "out_proj.weight")):
            head, sep, tail = key.partition(part)
            if sep and tail.endswith(".weight") and tail.split(".")[0].isdigit():
                fused.setdefault(f"{head}.{name}", []).append((int(tail.split(".")[0]), value))
                break
        else:
            out[key] = value
    for key, parts in fused.items():
        out[key] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0)
    return out


def _voice_audio(index: int, seconds: float = VOICE_SECONDS, sr: int = 24000) -> Any:
    """A deterministic speech-like clip per voice: gliding harmonics at a voice's pitch."""
    t = np.arange(int(seconds * sr), dtype=np.float64) / sr
    f0 = 110.0 + 12.0 * index + 25.0 * np.sin(2 * np.pi * (0.7 + 0.05 * index) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    env = 0.55 + 0.45 * np.sin(2 * np.pi * (3.0 + 0.2 * index) * t)
    wav = 0.25 * env * (np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase))
    return wav.astype(np.float32)


def write_dev_personaplex(target: Path, seed: int = 0) -> None:
    """Write the checkpoint files (LM, Mimi, tokenizer, configs, voices) into ``target``."""
    import torch

    from .voices import encode_voice, save_voice_pt, write_wav

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # byte-stable convolutions (see devcheckpoint.build_weights)
    try:
        mimi, lm16 = build_models(seed, DEV_PP_MIMI_CONFIG,
                                  {**DEV_PP_LM_CONFIG, "dep_q": NVIDIA_DEP_Q})
    finally:
        torch.set_num_threads(threads)
    (target / MIMI_WEIGHTS_NAME).write_bytes(_state_bytes(legacy_names(mimi.state_dict())))
    (target / MOSHI_WEIGHTS_NAME).write_bytes(_state_bytes(legacy_names(lm16.state_dict())))
    (target / MIMI_CONFIG_NAME).write_text(json.dumps(DEV_PP_MIMI_CONFIG, indent=2,
                                                      sort_keys=True))
    tok = train_tokenizer(TEXT_CARD, seed)
    (target / TOKENIZER_NAME).write_bytes(tok)
    voices = target / VOICES_DIR
    voices.mkdir(exist_ok=True)
    lm = load_personaplex_lm(target / MOSHI_WEIGHTS_NAME, DEV_PP_LM_CONFIG,
                             torch.device("cpu"), torch.float32)
    for i, name in enumerate(NVIDIA_VOICES):
        wav = _voice_audio(i)
        write_wav(voices / f"{name}.wav", wav)
        codes = encode_voice(mimi, wav)
        buf = io.BytesIO()
        save_voice_pt(buf, lm, codes)
        (voices / f"{name}.pt").write_bytes(buf.getvalue())
    (target / PERSONAPLEX_JSON).write_text(json.dumps(
        {"family": "personaplex", "depformer_steps": NVIDIA_DEP_Q, "voices": VOICES_DIR,
         "default_voice": "NATF2", "version": DEV_PERSONAPLEX_VERSION, "seed": seed},
        indent=2, sort_keys=True))

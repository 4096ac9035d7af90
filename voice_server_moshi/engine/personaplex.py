"""Loading PersonaPlex-family checkpoints (NVIDIA's ``nvidia/personaplex-7b-v1``, and
``dev-personaplex``) into Kyutai's ``LMModel``.

What NVIDIA's loader (their ``moshi/models/loaders.py``, ``get_moshi_lm``) does that Kyutai's
does not: it builds the LM with ``dep_q = 16`` (the depth transformer also predicts the user
stream), expands an 8-step depth transformer's attention weights to 16 by repeating them and
copies the missing per-step weights (``gating``, ``linears``, ``depformer_in``,
``depformer_emb``) from steps 0..7, and loads with ``strict=False`` (a missing weight stays
random, with a print). Here the LM keeps Kyutai's 8 agent steps: the user stream is always
given (the caller's codes, or the prompt's sine), so steps 8..15 never change a token the
call hears (the depth transformer is causal over steps and restarts every frame); their
weights are dropped, a 16-step attention weight keeps its first 8 steps, and the load is
strict: any other missing or unexpected weight is an error naming it.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._log import get_logger
from .persona import PersonaSupport
from .voices import VoiceLibrary
from .weights_check import check_safetensors_file

log = get_logger(__name__)

#: The hub repo names of the family (checkpoint names containing this are PersonaPlex).
FAMILY_MARK = "personaplex"
#: The marker file of a PersonaPlex checkpoint directory (the dev maker writes it).
PERSONAPLEX_JSON = "personaplex.json"
#: Per-step weight groups of the depth transformer: (pattern, first index past the agent).
_AGENT_ONLY = (
    (re.compile(r"^linears\.(\d+)\."), 0),
    (re.compile(r"^depformer_in\.(\d+)\."), 0),
    (re.compile(r"^depformer_emb\.(\d+)\."), -1),
    (re.compile(r"^depformer\.layers\.\d+\.gating\.(\d+)\."), 0),
)
_FUSED = re.compile(r"^depformer\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$")


class PersonaPlexLoadError(ValueError):
    """The weights are not a PersonaPlex LM of the expected configuration."""


def agent_state_dict(state: dict[str, Any], dep_q: int) -> tuple[dict[str, Any], int]:
    """NVIDIA's weights as an LM with ``dep_q`` depth steps: per-step weights past the agent
    stream dropped, fused depth attention weights cut to their first ``dep_q`` steps.
    Returns the new dict and how many tensors were dropped."""
    out: dict[str, Any] = {}
    dropped = 0
    steps_in: int | None = None
    for key, value in state.items():
        for pattern, shift in _AGENT_ONLY:
            m = pattern.match(key)
            if m and int(m.group(1)) >= dep_q + shift:
                dropped += 1
                break
        else:
            if _FUSED.match(key):
                rows = value.shape[0]
                per_step = (3 if "in_proj" in key else 1) * value.shape[1]
                if rows % per_step:
                    raise PersonaPlexLoadError(f"{key}: {tuple(value.shape)} is not a whole "
                                               "number of depth steps")
                steps_in = rows // per_step
                if steps_in < dep_q:
                    raise PersonaPlexLoadError(
                        f"{key} has {steps_in} depth steps, fewer than the agent's {dep_q}")
                value = value[: dep_q * per_step]
            out[key] = value
    log.info("personaplex weights mapped", depth_steps=steps_in, kept_steps=dep_q,
             dropped_tensors=dropped)
    return out, dropped


def load_personaplex_lm(path: Path, lm_config: dict[str, Any], device: Any, dtype: Any) -> Any:
    """Kyutai's ``LMModel`` of ``lm_config`` (``dep_q`` 8) with NVIDIA's weights, strict."""
    import torch
    from moshi.models.lm import LMModel
    from safetensors.torch import load_file

    check_safetensors_file(path, "PersonaPlex LM weights")
    cfg = {k: v for k, v in lm_config.items() if k != "depformer_causal"}
    lm = LMModel(device=torch.device("meta"), dtype=dtype, **cfg)  # as Kyutai's loader
    state, _ = agent_state_dict(load_file(str(path), device=str(device)), int(cfg["dep_q"]))
    state = {k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in state.items()}
    try:
        lm.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise PersonaPlexLoadError(f"{path}: not a PersonaPlex LM of this configuration: "
                                   f"{str(exc)[:800]}") from None
    return lm.eval()


@dataclass
class PersonaModel:
    """What a PersonaPlex engine knows beyond the LM: its voices and default voice."""

    voices: VoiceLibrary
    default_voice: str | None
    checkpoint: str

    def support(self) -> PersonaSupport:
        return PersonaSupport("personaplex", self.voices.names(), self.default_voice,
                              self.checkpoint)


def is_personaplex(checkpoint: str) -> bool:
    """Whether ``checkpoint`` names a PersonaPlex-family checkpoint: ``dev-personaplex``, a
    directory with ``personaplex.json``, or a hub repo whose name says so."""
    if checkpoint == "dev-personaplex":
        return True
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return (path / PERSONAPLEX_JSON).is_file()
    return FAMILY_MARK in checkpoint.lower()


def marker(directory: Path) -> dict[str, Any]:
    """A checkpoint directory's ``personaplex.json`` (empty when it has none)."""
    p = directory / PERSONAPLEX_JSON
    data: dict[str, Any] = json.loads(p.read_text()) if p.is_file() else {}
    return data


def hub_voices_dir(repo: str) -> Path:
    """NVIDIA's ``voices.tgz`` from the hub repo, unpacked beside it once (members checked:
    files under ``voices/`` only, tar's ``data`` filter)."""
    from huggingface_hub import hf_hub_download

    tgz = Path(hf_hub_download(repo, "voices.tgz"))
    out = tgz.parent / "voices"
    if not out.is_dir():
        with tarfile.open(tgz, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith("voices/") and (m.isfile() or m.isdir())]
            tar.extractall(tgz.parent, members=members, filter="data")
    return out

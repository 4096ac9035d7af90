"""Loading Mimi + the Moshi LM through the ``moshi`` package's own loaders.

Three sources: ``dev`` (the generated tiny checkpoint), a local directory with a
``config.json``, or a Hugging Face repo name (downloaded by ``huggingface_hub``, so
``HF_HUB_OFFLINE=1`` makes it cache-only). For benchmarks, ``architecture="full"`` builds the
full-size Moshi 7B and Mimi configurations with random weights: no download, the same
compute and memory as the real weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .._log import get_logger
from .persona import PersonaSupport
from .personaplex import PersonaModel, hub_voices_dir, is_personaplex, load_personaplex_lm, marker
from .stt import SttModels, load_stt
from .voices import VoiceLibrary

log = get_logger(__name__)

Architecture = Literal["checkpoint", "full"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or auto")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPU (Moshi's own choice) and float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


@dataclass
class LoadedModels:
    """Mimi, the LM and the text tokenizer, ready for an engine."""

    mimi: Any  # moshi.models.MimiModel
    lm: Any  # moshi.models.LMModel
    tokenizer: Any | None  # sentencepiece.SentencePieceProcessor; None for random full-size
    model_type: str
    lm_gen_config: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    description: str = ""
    #: Where the LM and Mimi weights came from (file path or hub name); "" when random.
    lm_file: str = ""
    mimi_file: str = ""
    #: The caller-transcript STT batched beside Moshi, or None.
    stt: SttModels | None = None
    #: PersonaPlex checkpoints: voices and default voice.
    persona: PersonaModel | None = None

    def persona_support(self) -> PersonaSupport:
        """What :func:`~.persona.check_persona` checks a call's prompt against."""
        if self.persona is not None:
            return self.persona.support()
        return PersonaSupport(self.model_type,
                              checkpoint=self.description.removeprefix("checkpoint "))

    def text_piece(self, token: int) -> str | None:
        """The text a token stands for, as Kyutai's server sends it; None for PAD/EPAD."""
        if token in (self.lm.text_padding_token_id, self.lm.end_of_text_padding_id):
            return None
        if self.tokenizer is None or token < 0 or token >= self.tokenizer.vocab_size():
            return None
        piece: str = self.tokenizer.id_to_piece(token)
        return piece.replace("▁", " ")


def load_models(
    checkpoint: str = "dev",
    *,
    device: str = "auto",
    dtype: str = "auto",
    context: int | None = None,
    architecture: Architecture = "checkpoint",
    stt: str | None = None,
    voices: str | None = None,
    extra_voices: tuple[str, ...] = (),
) -> LoadedModels:
    """Load Mimi + LM. ``context`` (LM steps of 80 ms) sets the KV cache, i.e. memory per
    slot; None keeps the checkpoint's (3000 for Moshi). ``stt``: a Kyutai STT checkpoint
    (``dev``, a directory, a repo; ``full``: kyutai/stt-1b-en_fr's sizes, random weights)
    on the same device and dtype, for caller transcripts (ADR 0075). ``voices``: a
    PersonaPlex checkpoint's voice directory (default: the checkpoint's own, or NVIDIA's
    ``voices.tgz``); ``extra_voices``: more voice files (``.pt`` or audio) by path."""
    if architecture == "checkpoint" and is_personaplex(checkpoint):
        models = _load_personaplex(checkpoint, device=device, dtype=dtype, context=context,
                                  voices=voices, extra_voices=extra_voices)
    else:
        if voices is not None or extra_voices:
            raise ValueError(f"voices are for PersonaPlex checkpoints; {checkpoint!r} is not one")
        models = _load_moshi(checkpoint, device=device, dtype=dtype, context=context,
                             architecture=architecture)
    if stt is not None:
        models.stt = load_stt(stt, device=models.device, dtype=models.dtype)
    return models


def _load_moshi(checkpoint: str, *, device: str, dtype: str, context: int | None,
                architecture: Architecture) -> LoadedModels:
    from moshi.models import loaders

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if context is not None and context < 8:
        raise ValueError(f"context must be >= 8 steps, got {context}")
    overrides: dict[str, Any] = {} if context is None else {"context": context}
    if architecture == "full":
        # Random weights, full size: init straight on the device (meta-free) in the dtype.
        mimi = loaders.get_mimi(None, device=dev, num_codebooks=8)
        lm = loaders.get_moshi_lm(None, lm_kwargs=None, device=dev, dtype=dt,
                                  lm_kwargs_overrides=overrides)
        desc = "full-size Moshi 7B + Mimi, random weights"
        log.info("models built", architecture="full", device=str(dev), dtype=str(dt))
        return LoadedModels(mimi, lm, None, "moshi", {}, dev, dt, desc)
    if architecture != "checkpoint":
        raise ValueError(f"architecture must be 'checkpoint' or 'full', got {architecture!r}")

    from .checkpoints import resolve_checkpoint

    info = resolve_checkpoint(checkpoint)  # safetensors only, checked before any load
    if info.model_type != "moshi":
        raise ValueError(
            f"checkpoint {checkpoint!r} is a {info.model_type!r} model; the engine serves "
            "Moshi dialogue models only"
        )
    mimi = info.get_mimi(device=dev)
    lm = info.get_moshi(device=dev, dtype=dt, lm_kwargs_overrides=overrides)
    tok = info.get_text_tokenizer()
    log.info("models loaded", checkpoint=checkpoint, device=str(dev), dtype=str(dt))
    return LoadedModels(mimi, lm, tok, info.model_type, dict(info.lm_gen_config), dev, dt,
                        f"checkpoint {checkpoint}",
                        lm_file=str(info.moshi_weights), mimi_file=str(info.mimi_weights))


def _load_personaplex(checkpoint: str, *, device: str, dtype: str, context: int | None,
                     voices: str | None, extra_voices: tuple[str, ...]) -> LoadedModels:
    """A PersonaPlex checkpoint: Mimi and tokenizer through the ``moshi`` package's
    ``CheckpointInfo``, the LM through :func:`.personaplex.load_personaplex_lm`, and the
    voice library."""
    from .checkpoints import resolve_checkpoint

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if context is not None and context < 8:
        raise ValueError(f"context must be >= 8 steps, got {context}")
    info = resolve_checkpoint(checkpoint)  # safetensors only, checked before any load
    lm_config: dict[str, Any] = dict(info.lm_config)
    if context is not None:
        lm_config["context"] = context
    mimi = info.get_mimi(device=dev)
    lm = load_personaplex_lm(Path(info.moshi_weights), lm_config, dev, dt)
    tok = info.get_text_tokenizer()
    directory = Path(info.moshi_weights).parent
    meta = marker(directory)
    if voices is not None:
        vdir = Path(voices).expanduser()
    elif meta.get("voices"):
        vdir = directory / str(meta["voices"])
    else:
        vdir = hub_voices_dir(checkpoint)
    library = VoiceLibrary.from_directory(vdir, mimi, lm)
    for path in extra_voices:
        library.add_file(Path(path).expanduser(), mimi, lm)
    default = meta.get("default_voice", "NATF2")
    persona = PersonaModel(library, default if default in library.voices else None, checkpoint)
    log.info("personaplex loaded", checkpoint=checkpoint, voices=len(library.voices),
             device=str(dev), dtype=str(dt))
    return LoadedModels(mimi, lm, tok, "personaplex", dict(info.lm_gen_config), dev, dt,
                        f"checkpoint {checkpoint}", lm_file=str(info.moshi_weights),
                        mimi_file=str(info.mimi_weights), persona=persona)

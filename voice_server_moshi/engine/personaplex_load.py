"""``load_models`` for a PersonaPlex checkpoint: Mimi and tokenizer through the ``moshi``
package's ``CheckpointInfo``, the LM through :func:`.personaplex.load_personaplex_lm`, and
the voice library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._log import get_logger
from .models import LoadedModels, resolve_device, resolve_dtype
from .personaplex import PersonaModel, hub_voices_dir, load_personaplex_lm, marker
from .voices import VoiceLibrary

log = get_logger(__name__)


def load_personaplex(checkpoint: str, *, device: str, dtype: str, context: int | None,
                     voices: str | None, extra_voices: tuple[str, ...]) -> LoadedModels:
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

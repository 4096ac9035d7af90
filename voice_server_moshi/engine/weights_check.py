"""Refuse weights that are not safetensors, before anything loads them.

The ``moshi`` package loads any weight file whose name does not end in ``.safetensors``
(or ``.sft``/``.sfts``) with ``torch.load``, i.e. through pickle: with torch older than
2.6 (``weights_only=False`` by default) a crafted file runs code as it loads. Checkpoints
here are safetensors only: each weight file of a checkpoint must have a safetensors name
*and* a safetensors header (an 8-byte little-endian length, then that many bytes of a
JSON object), checked by reading the header only; anything else is refused with an error
naming the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..errors import VoiceServerMoshiError

__all__ = ["SAFETENSORS_SUFFIXES", "UnsafeCheckpointError", "check_checkpoint_weights",
           "check_safetensors_file"]

#: What the moshi package treats as safetensors (anything else goes to torch.load).
SAFETENSORS_SUFFIXES = (".safetensors", ".sft", ".sfts")
#: Headers are a few hundred kB for a 7B model; more is not a safetensors file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class UnsafeCheckpointError(VoiceServerMoshiError, ValueError):
    """A checkpoint file is not safetensors (pickle-based weights are refused)."""


def check_safetensors_file(path: str | Path, what: str = "weights") -> Path:
    """``path`` if it is a safetensors file; else :class:`UnsafeCheckpointError`."""
    p = Path(path)
    if p.suffix not in SAFETENSORS_SUFFIXES:
        raise UnsafeCheckpointError(
            f"refusing to load {what} from {str(p)!r}: only safetensors weights "
            f"({', '.join(SAFETENSORS_SUFFIXES)}) are loaded; pickle-based files (.pt, .pth, "
            ".bin, .ckpt) can run code when loaded. Convert it with safetensors.torch.save_file."
        )
    try:
        with p.open("rb") as f:
            head = f.read(8)
            size = p.stat().st_size
            if len(head) < 8:
                raise UnsafeCheckpointError(f"{what} file {str(p)!r} is too short to be "
                                            "safetensors")
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= min(_MAX_HEADER_BYTES, size - 8):
                raise UnsafeCheckpointError(
                    f"{what} file {str(p)!r} has no safetensors header (header length {n} "
                    f"in a file of {size} bytes); refusing to load it")
            header: Any = json.loads(f.read(n))
    except OSError as exc:
        raise UnsafeCheckpointError(f"cannot read {what} file {str(p)!r}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnsafeCheckpointError(
            f"{what} file {str(p)!r} is not safetensors (its header is not JSON); "
            "refusing to load it") from None
    if not isinstance(header, dict):
        raise UnsafeCheckpointError(f"{what} file {str(p)!r} is not safetensors (its header "
                                    "is not a JSON object); refusing to load it")
    return p


def check_checkpoint_weights(info: Any) -> None:
    """Check every weight file of a ``moshi.models.loaders.CheckpointInfo``."""
    check_safetensors_file(info.moshi_weights, "Moshi LM weights")
    check_safetensors_file(info.mimi_weights, "Mimi weights")
    lora = getattr(info, "lora_weights", None)
    if lora is not None:
        check_safetensors_file(lora, "LoRA weights")

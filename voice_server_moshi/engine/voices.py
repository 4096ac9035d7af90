"""Voice prompts: NVIDIA's ``.pt`` files (read as tensors only) and audio files.

A ``.pt`` voice (what ``voices.tgz`` ships) is a dict of two tensors, ``embeddings``
(``[Fv - 1, 1, 1, dim]``: the LM input NVIDIA's ``LMGen`` fed for the voice's first columns)
and ``cache`` (``[1, 17, CT]``: its token cache after the voice). It is read with
``torch.load(weights_only=True)``, which builds tensors and plain containers only: a file
that needs anything else (a pickle payload that would run code) is refused, as pickled
checkpoints are (ADR 0065). Audio voices (``.wav``) are encoded with the checkpoint's Mimi
at load time, frame by frame as NVIDIA's code does.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .._log import get_logger
from .persona import VOICE_SUFFIXES, PersonaError
from .persona_prompt import COLUMN, SINE_TOKENS, TEXT_PAD, Ints, VoicePrompt, columns
from .weights_check import UnsafeCheckpointError

log = get_logger(__name__)

FRAME = 1920
SAMPLE_RATE = 24000
#: NVIDIA normalises audio voices to -24 LUFS (pyloudnorm); here to the same RMS level,
#: close for speech but not identical (their shipped ``.pt`` voices are exact).
TARGET_DBFS = -24.0
#: NVIDIA's cache width (``max_delay + 3``), the ``.pt`` cache's last dimension.
NVIDIA_CACHE_COLUMNS = 4


def write_wav(path: Path, pcm: Any) -> None:
    """16-bit mono 24 kHz WAV."""
    data = (np.clip(np.asarray(pcm, dtype=np.float32), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(data.tobytes())


def read_audio(path: Path) -> Any:
    """Mono float32 at 24 kHz, RMS-normalised to ``TARGET_DBFS``."""
    import sphn

    try:
        pcm, sr = sphn.read(str(path))
    except Exception as exc:
        raise PersonaError(f"cannot read voice audio {str(path)!r}: {exc}") from None
    pcm = sphn.resample(pcm, src_sample_rate=sr, dst_sample_rate=SAMPLE_RATE)[0]
    rms = float(np.sqrt(np.mean(np.square(pcm)))) if pcm.size else 0.0
    if rms <= 1e-6:
        raise PersonaError(f"voice audio {str(path)!r} is silent or empty")
    return (pcm * (10 ** (TARGET_DBFS / 20) / rms)).astype(np.float32)


def encode_voice(mimi: Any, pcm: Any) -> Ints:
    """The voice's Mimi codes ``[Fv, 8]``: 80 ms frames (the last zero-padded) encoded one
    by one from a fresh streaming state, as NVIDIA's ``encode_from_sphn`` does."""
    import torch

    x = np.asarray(pcm, dtype=np.float32)
    frames = max(1, -(-len(x) // FRAME))
    x = np.concatenate([x, np.zeros(frames * FRAME - len(x), dtype=np.float32)])
    dev = next(iter(mimi.parameters())).device
    out = []
    with torch.no_grad(), mimi.streaming(1):
        for i in range(frames):
            chunk = torch.from_numpy(x[i * FRAME:(i + 1) * FRAME]).to(dev)[None, None]
            out.append(mimi.encode(chunk)[0, :, 0].cpu().numpy())
    return np.stack(out).astype(np.int64)


def _voice_columns(lm: Any, codes: Ints) -> Ints:
    """The voice's columns as NVIDIA's LMGen fed them (initial tokens in columns 0/1)."""
    fv = len(codes)
    text = np.full(fv, TEXT_PAD, dtype=np.int64)
    user = np.tile(np.asarray(SINE_TOKENS, dtype=np.int64), (fv, 1))
    cols = columns(text, codes, user)
    initial = np.array([lm.text_card] + [lm.card] * (COLUMN - 1), dtype=np.int64)
    delays = np.asarray(lm.delays)
    cols[0] = initial
    cols[1] = np.where(delays >= 1, initial, cols[1])
    return cols


def save_voice_pt(target: IO[bytes], lm: Any, codes: Ints) -> None:
    """Write what NVIDIA's ``save_voice_prompt_embeddings`` writes for these voice codes:
    the input embeddings of columns ``0 .. Fv - 2`` and NVIDIA's cache after the voice."""
    import torch

    cols = _voice_columns(lm, codes)
    fv = len(codes)
    seq = torch.from_numpy(cols[:fv - 1]).T[None].to(next(iter(lm.parameters())).device)
    with torch.no_grad():
        emb = None
        for k in range(lm.num_audio_codebooks):
            e = lm.emb[k](seq[:, k + 1])
            emb = e if emb is None else emb + e
        emb = emb + lm.text_emb(seq[:, 0])  # [1, Fv - 1, dim], NVIDIA's summing order
    embeddings = emb[0][:, None, None, :].detach().cpu()  # [Fv - 1, 1, 1, dim]
    cache = np.full((COLUMN, NVIDIA_CACHE_COLUMNS), -2, dtype=np.int64)
    for c in range(fv + 1):  # NVIDIA's writes, column by column, into a ring of 4
        cache[:, c % NVIDIA_CACHE_COLUMNS] = np.where(cols[c] >= 0, cols[c],
                                                      cache[:, c % NVIDIA_CACHE_COLUMNS])
    torch.save({"embeddings": embeddings, "cache": torch.from_numpy(cache)[None]}, target)


def load_voice_pt(path: Path, name: str, dim: int) -> VoicePrompt:
    """A ``.pt`` voice, read as tensors only (a pickle payload is refused)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing voice prompt {str(path)!r}: it holds more than tensors (a pickle "
            f"payload that could run code); only NVIDIA's embeddings/cache tensors are "
            f"read ({str(exc).splitlines()[0][:200]})") from None
    except Exception as exc:
        raise PersonaError(f"cannot read voice prompt {str(path)!r}: {exc}") from None
    if not isinstance(state, dict) or not {"embeddings", "cache"} <= set(state):
        raise PersonaError(f"voice prompt {str(path)!r} is not NVIDIA's format "
                           "(a dict with 'embeddings' and 'cache')")
    emb, cache = state["embeddings"], state["cache"]
    if not (isinstance(emb, torch.Tensor) and emb.dim() >= 2 and emb.shape[-1] == dim
            and emb.shape[0] >= 1):
        raise PersonaError(f"voice prompt {str(path)!r}: embeddings are not [N, ..., {dim}] "
                           "(made for another checkpoint?)")
    ct = NVIDIA_CACHE_COLUMNS
    if not (isinstance(cache, torch.Tensor) and tuple(cache.shape) == (1, COLUMN, ct)):
        raise PersonaError(f"voice prompt {str(path)!r}: cache is not [1, {COLUMN}, {ct}]")
    fv = emb.shape[0] + 1
    c = cache[0].long().numpy()
    tail = np.stack([c[:, (fv - 1) % ct], c[:, fv % ct]])
    return VoicePrompt(name, None, emb.reshape(emb.shape[0], dim).float().clone(), tail)


@dataclass
class VoiceLibrary:
    """The voices an engine can use, by name (``.pt`` preferred over audio of one name)."""

    voices: dict[str, VoicePrompt] = field(default_factory=dict)
    directory: Path | None = None

    def names(self) -> frozenset[str]:
        return frozenset(self.voices)

    def get(self, name: str) -> VoicePrompt:
        try:
            return self.voices[name]
        except KeyError:
            raise PersonaError(f"unknown voice {name!r}") from None

    def add_file(self, path: Path, mimi: Any, lm: Any, name: str | None = None) -> str:
        """Load one voice file (``.pt`` or audio) under ``name`` (default: its stem)."""
        name = name or path.stem
        if path.suffix.lower() == ".pt":
            self.voices[name] = load_voice_pt(path, name, int(lm.dim))
        else:
            self.voices[name] = VoicePrompt(name, encode_voice(mimi, read_audio(path)))
        return name

    @classmethod
    def from_directory(cls, directory: Path, mimi: Any, lm: Any) -> VoiceLibrary:
        lib = cls(directory=directory)
        if not directory.is_dir():
            raise PersonaError(f"voice directory {str(directory)!r} does not exist")
        files = sorted(p for p in directory.iterdir()
                       if p.is_file() and p.suffix.lower() in VOICE_SUFFIXES)
        for p in sorted(files, key=lambda p: p.suffix.lower() != ".pt"):
            if p.stem not in lib.voices:
                lib.add_file(p, mimi, lm)
        log.info("voices loaded", directory=str(directory), voices=len(lib.voices))
        return lib

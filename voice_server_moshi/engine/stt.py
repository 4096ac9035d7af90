"""Caller transcripts: a batch of Kyutai streaming-STT rows beside the Moshi rows (ADR 0075).

Kyutai's STT models (``kyutai/stt-1b-en_fr``, ``kyutai/stt-2.6b-en``) are ``moshi`` LMs with
no depformer (``dep_q = 0``): the caller's Mimi codes go in, one text token comes out per
80 ms step. The engine already Mimi-encodes every caller frame for Moshi, so the STT costs one
extra batched LM step per tick and no codec work: :class:`SttBatch` holds one STT row per
engine slot and steps with the same codes, exec mask and per-row reset as the Moshi rows.

Codebooks: Moshi reads 8 of Mimi's codebooks, Kyutai's STT models 32. Mimi's RVQ is
residual, so encoding 32 gives the same first 8 codes as encoding 8; the engine sets Mimi
to the larger count, LMGen keeps the first ``n_q - dep_q`` of what it gets.

``stt_config`` (Kyutai's keys, read by ``CheckpointInfo``): ``audio_silence_prefix_seconds``
of silence go in before a call's first frame (run as extra steps of the joining rows only,
on its first tick), and ``audio_delay_seconds`` is how late text follows audio; when a call
ends, :meth:`SttBatch.flush` runs that many steps of silence through its row, so the last
words come out before the call is over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .._log import get_logger
from .slot import SttOutput

__all__ = ["SttBatch", "SttModels", "SttOutput", "load_stt", "make_stt_batch"]

log = get_logger(__name__)

#: Kyutai's example reads this head's class 0 as "the speaker's turn has ended".
END_OF_TURN_HEAD = 2

#: kyutai/stt-1b-en_fr's LM sizes (its config.json and Kyutai's Rust server config), for
#: ``stt = "full"``: random weights, the real compute and memory (benchmarks).
STT_1B_CONFIG: dict[str, Any] = {
    "dim": 2048, "text_card": 8000, "existing_text_padding_id": 3, "n_q": 32, "dep_q": 0,
    "card": 2048, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 750, "max_period": 100000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "delays": [0] * 33,
    "extra_heads_num_heads": 4, "extra_heads_dim": 6,
}
STT_1B_STT_CONFIG: dict[str, float] = {"audio_delay_seconds": 0.5,
                                       "audio_silence_prefix_seconds": 0.0}


@dataclass
class SttModels:
    """A loaded STT checkpoint: its LM, tokenizer and ``stt_config``."""

    lm: Any  # moshi.models.LMModel with dep_q == 0
    tokenizer: Any | None  # sentencepiece.SentencePieceProcessor; None for "full"
    stt_config: dict[str, Any] = field(default_factory=dict)
    lm_gen_config: dict[str, Any] = field(default_factory=dict)
    mimi_weights: Path | None = None
    description: str = ""

    @property
    def codebooks(self) -> int:
        """Mimi codebooks the LM reads."""
        return int(self.lm.n_q - self.lm.dep_q)

    @property
    def delay_s(self) -> float:
        return float(self.stt_config.get("audio_delay_seconds", 0.0))

    @property
    def prefix_s(self) -> float:
        return float(self.stt_config.get("audio_silence_prefix_seconds", 0.0))

    def text_piece(self, token: int) -> str | None:
        if token < 0 or token in (self.lm.text_padding_token_id, self.lm.end_of_text_padding_id):
            return None
        if self.tokenizer is None or token >= self.tokenizer.vocab_size():
            return None
        piece: str = self.tokenizer.id_to_piece(token)
        return piece.replace("▁", " ")


def resolve_stt_checkpoint(name: str) -> Any:
    """A ``CheckpointInfo`` for ``dev`` (the generated dev STT checkpoint), a local
    directory with a ``config.json``, or a Hugging Face repo (e.g. kyutai/stt-1b-en_fr)."""
    from moshi.models import loaders

    from .checkpoints import CONFIG_NAME, resolve_checkpoint

    if name == "dev":
        from .devstt import dev_stt_checkpoint_dir

        d = dev_stt_checkpoint_dir()
        return loaders.CheckpointInfo.from_hf_repo(str(d), config_path=d / CONFIG_NAME)
    return resolve_checkpoint(name)


def load_stt(name: str, *, device: torch.device, dtype: torch.dtype) -> SttModels:
    """Load an STT checkpoint through the ``moshi`` package's loaders; refuse anything that
    is not a ``dep_q = 0`` speech-to-text LM. ``full``: kyutai/stt-1b-en_fr's sizes with
    random weights (no tokenizer: it writes no text), for benchmarks."""
    if name == "full":
        from moshi.models.lm import LMModel

        lm = LMModel(device=device, dtype=dtype, **STT_1B_CONFIG).eval()
        return SttModels(lm, None, dict(STT_1B_STT_CONFIG), {}, None,
                         "stt full-size 1B, random weights")
    info = resolve_stt_checkpoint(name)
    if info.model_type != "stt" or (info.lm_config or {}).get("dep_q", 8) != 0:
        raise ValueError(
            f"STT checkpoint {name!r} is a {info.model_type!r} model; caller transcripts need "
            "a Kyutai speech-to-text checkpoint (model_type 'stt', no depformer), e.g. "
            "kyutai/stt-1b-en_fr or 'dev'")
    lm = info.get_moshi(device=device, dtype=dtype)
    log.info("stt loaded", checkpoint=name, device=str(device), dtype=str(dtype))
    return SttModels(lm, info.get_text_tokenizer(), dict(info.stt_config),
                     dict(info.lm_gen_config), Path(info.mimi_weights), f"stt {name}")


def check_same_codec(stt: SttModels, mimi: Any) -> None:
    """The shared encode is only right if the STT was trained on this very Mimi: compare
    the STT checkpoint's Mimi weights with the engine's, tensor by tensor."""
    if stt.mimi_weights is None:
        return
    from safetensors.torch import load_file

    ours = mimi.state_dict()
    theirs: dict[str, torch.Tensor] = load_file(str(stt.mimi_weights), device="cpu")
    if set(theirs) != set(ours):
        raise ValueError(f"{stt.description}: its Mimi has other parameters than the "
                         "engine's; the STT must use Moshi's codec to share its encode")
    for k in sorted(theirs):
        if not torch.equal(theirs[k], ours[k].detach().cpu().to(theirs[k].dtype)):
            raise ValueError(f"{stt.description}: its Mimi weights differ from the "
                             f"engine's ({k}); the STT must share Moshi's codec")


class SttBatch:
    """One STT row per engine slot. All methods run in the engine's tick thread, inside
    its ``torch.no_grad()``; ``codes`` are the engine's Mimi codes ``[B, K, 1]``."""

    #: Per-row state besides ``lm_gen``'s (:mod:`.row_state`): each row's step counter.
    ROW_LISTS = ("_steps",)

    def __init__(self, models: SttModels, batch: int, silence_codes: torch.Tensor,
                 frame_rate: float = 12.5) -> None:
        from moshi.models.lm import LMGen

        self.models = models
        self.batch = batch
        lm = models.lm
        self.device = lm.device
        params: dict[str, Any] = {"temp": 0.0, "temp_text": 0.0}  # Kyutai runs STT greedy
        params.update(models.lm_gen_config)
        self.lm_gen = LMGen(lm, support_out_of_sync=True, **params)
        self._stream = self.lm_gen.streaming(batch)
        self._stream.__enter__()
        self.prefix_frames = math.ceil(models.prefix_s * frame_rate)
        self.flush_frames = math.ceil(models.delay_s * frame_rate) + 1
        self.delay_ms = 1000.0 * models.delay_s
        k = models.codebooks
        if silence_codes.shape[1] < k or silence_codes.shape[2] < 1:
            raise ValueError(f"silence codes {tuple(silence_codes.shape)} lack the STT's {k} "
                             "codebooks")
        # [1, K, T] codes of silence from a fresh Mimi: the prefix takes them in order, the
        # flush repeats the last (steady-state) column.
        self._silence = silence_codes[:, :k].to(self.device)
        self._steps = [0] * batch
        self.has_heads = len(lm.extra_heads) > END_OF_TURN_HEAD
        self._none = torch.zeros(batch, dtype=torch.bool, device=self.device)
        self.lm_gen.set_exec_mask(self._none)

    @property
    def codebooks(self) -> int:
        return self.models.codebooks

    def close(self) -> None:
        self._stream.__exit__(None, None, None)

    def warm_up_step(self, codes: torch.Tensor) -> None:
        self.lm_gen.set_exec_mask(torch.ones_like(self._none))
        self._step(codes)

    def reset_all(self) -> None:
        self.lm_gen.reset_streaming()
        self.lm_gen.set_exec_mask(self._none)
        self._steps = [0] * self.batch

    def _step(self, codes: torch.Tensor) -> tuple[list[int], list[float] | None]:
        out = self.lm_gen.step_with_extra_heads(codes[:, : self.codebooks])
        if out is None:  # only without support_out_of_sync, which is always set here
            raise RuntimeError("LMGen.step_with_extra_heads returned nothing")
        tokens, heads = out
        tok: list[int] = tokens[:, 0, 0].tolist()
        eot: list[float] | None = None
        if self.has_heads:
            eot = heads[END_OF_TURN_HEAD][:, 0, 0].float().tolist()
        return tok, eot

    def step(self, codes: torch.Tensor, exec_mask: torch.Tensor,
             first_mask: torch.Tensor | None) -> list[SttOutput | None]:
        """One step for the rows in ``exec_mask``; rows in ``first_mask`` start a call
        (reset, then the silence prefix). Returns one output per row (None if idle)."""
        b = self.batch
        if first_mask is not None and bool(first_mask.any()):
            self.lm_gen.reset_streaming(first_mask)
            for i in torch.nonzero(first_mask).flatten().tolist():
                self._steps[i] = 0
            if self.prefix_frames:
                self.lm_gen.set_exec_mask(first_mask)
                for t in range(self.prefix_frames):
                    col = min(t, self._silence.shape[2] - 1)
                    self._step(self._silence[:, :, col:col + 1].expand(b, -1, -1))
        self.lm_gen.set_exec_mask(exec_mask)
        tok, eot = self._step(codes)
        run: list[bool] = exec_mask.tolist()
        outs: list[SttOutput | None] = [None] * b
        for i in range(b):
            if not run[i]:
                continue
            outs[i] = SttOutput(self._steps[i], self.models.text_piece(tok[i]), tok[i],
                                None if eot is None else eot[i], self.delay_ms)
            self._steps[i] += 1
        return outs

    def flush(self, rows: list[int]) -> dict[int, list[SttOutput]]:
        """Run ``flush_frames`` steps of silence through ``rows`` (calls that ended), so
        their last words come out; the last output of each row is ``final``."""
        if not rows:
            return {}
        b = self.batch
        mask = torch.zeros(b, dtype=torch.bool, device=self.device)
        mask[rows] = True
        self.lm_gen.set_exec_mask(mask)
        silence = self._silence[:, :, -1:].expand(b, -1, -1)
        got: dict[int, list[SttOutput]] = {i: [] for i in rows}
        for n in range(self.flush_frames):
            tok, eot = self._step(silence)
            last = n == self.flush_frames - 1
            for i in rows:
                got[i].append(SttOutput(self._steps[i], self.models.text_piece(tok[i]), tok[i],
                                        None if eot is None else eot[i], self.delay_ms, last))
                self._steps[i] += 1
        self.lm_gen.set_exec_mask(self._none)
        return got


def silence_frames(models: SttModels, frame_rate: float = 12.5) -> int:
    """Frames of silence codes an :class:`SttBatch` wants: the prefix, and enough for
    Mimi to settle (the flush repeats the last one)."""
    return max(8, math.ceil(models.prefix_s * frame_rate))


def silence_codes(mimi: Any, frames: int, device: torch.device) -> torch.Tensor:
    """Mimi codes of ``frames`` frames of silence from a fresh stream, ``[1, K, frames]``.
    Call before the Mimi enters the engine's batched streaming mode."""
    frame = int(mimi.frame_size)
    with torch.no_grad(), mimi.streaming(1):
        x = torch.zeros(1, 1, frame, device=device)
        return torch.cat([mimi.encode(x) for _ in range(max(1, frames))], dim=-1)


class EngineModels(Protocol):
    """What :func:`make_stt_batch` needs of the engine's models
    (:class:`~.models.LoadedModels`, which loads the STT with :func:`load_stt`)."""

    mimi: Any  # moshi.models.MimiModel
    lm: Any  # moshi.models.LMModel
    device: torch.device
    stt: SttModels | None


def make_stt_batch(models: EngineModels, slots: int) -> SttBatch | None:
    """The engine's STT rows, if ``models`` carry an STT; sets the shared Mimi to encode
    as many codebooks as the hungrier model reads. Call before Mimi starts streaming."""
    stt = models.stt
    if stt is None:
        return None
    mimi = models.mimi
    need = max(int(models.lm.n_q - models.lm.dep_q), stt.codebooks)
    if need > int(mimi.total_codebooks):
        raise ValueError(f"{stt.description} reads {stt.codebooks} Mimi codebooks; the "
                         f"engine's Mimi has {mimi.total_codebooks}")
    mimi.set_num_codebooks(need)
    check_same_codec(stt, mimi)
    frame_rate = float(mimi.frame_rate)
    sil = silence_codes(mimi, silence_frames(stt, frame_rate), models.device)
    return SttBatch(stt, slots, sil, frame_rate)

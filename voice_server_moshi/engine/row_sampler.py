"""Per-row sampling inside one batched ``LMGen``: each call its own temperature, top-k,
pad bias, repetition penalty and seeds.

``LMGen`` samples every row with one setting through ``moshi.models.lm.sample_token`` (a
module global it looks up at call time). :func:`install` replaces that global with a
dispatcher that defers to Kyutai's function unless a :class:`RowSampler` is active on the
calling thread, i.e. inside the engine's own ``lm_gen.step`` (ADR 0080 explains why this
and not a fork of ``LMGen``). Any other ``LMGen`` in the process is untouched.

Randomness is counter-based, not a generator's stream: the noise for row ``r`` is a hash of
(the call's seed, the row's own step count, the stream: text or audio codebook ``k``, the
candidate's rank). So a call's draws depend only on its seed and its own history, never on
which other calls share the batch or when they joined; no Python state changes on the GPU
side between steps, so the depth transformer stays CUDA-graph capturable (every tensor the
sampler reads is a persistent buffer updated in place, top-k has a static width).

Sampling is Gumbel-max over the top-k temperature-scaled logits: exactly a draw from the
softmax restricted to the top k, as Kyutai's ``sample_top_k`` does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

from .call_sampling import MAX_REPETITION_CONTEXT, MAX_TOPK, CallSampling

__all__ = ["RowSampler", "install"]

_M32 = 0xFFFFFFFF
_active = threading.local()
_original: Callable[..., torch.Tensor] | None = None
_install_lock = threading.Lock()
#: Streams per step in the hash: text is 0, audio codebook k is k + 1.
_STREAMS = 64


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2**32).

    int64 products wrap on overflow; the mask keeps the low 32 bits, which are exact.
    """
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _dispatch(logits: torch.Tensor, use_sampling: bool = False, temp: float = 1.0,
              top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    sampler: RowSampler | None = getattr(_active, "sampler", None)
    if sampler is None:
        assert _original is not None
        return _original(logits, use_sampling, temp, top_k, top_p)
    return sampler._sample(logits)


def install() -> None:
    """Route ``LMGen``'s sampling through :func:`_dispatch` (idempotent, process-wide)."""
    global _original
    import moshi.models.lm as lm_mod

    with _install_lock:
        current = getattr(lm_mod, "sample_token")  # noqa: B009 - not re-exported by moshi
        if current is _dispatch:
            return
        _original = current
        setattr(lm_mod, "sample_token", _dispatch)  # noqa: B010


class RowSampler:
    """Sampling state for every row of one ``LMGen`` batch. Used from the tick thread."""

    #: Per-row state (:mod:`.row_state`): tensors with the batch on dim 0, lists by row.
    ROW_TENSORS = ("temp_text", "temp_audio", "topk_text", "topk_audio", "pad_mult",
                   "rep_penalty", "rep_context", "seed_text", "seed_audio", "steps",
                   "history", "hist_pos")
    ROW_LISTS = ("_applied",)

    def __init__(self, batch: int, device: torch.device, *, text_pad_id: int,
                 text_special_ids: tuple[int, ...], default: CallSampling) -> None:
        install()
        self.batch = batch
        self.device = device
        self.text_pad_id = text_pad_id
        self.default = default
        f32, i64 = torch.float32, torch.long
        self.temp_text = torch.zeros(batch, dtype=f32, device=device)
        self.temp_audio = torch.zeros(batch, dtype=f32, device=device)
        self.topk_text = torch.ones(batch, dtype=i64, device=device)
        self.topk_audio = torch.ones(batch, dtype=i64, device=device)
        self.pad_mult = torch.zeros(batch, dtype=f32, device=device)
        self.rep_penalty = torch.ones(batch, dtype=f32, device=device)
        self.rep_context = torch.zeros(batch, dtype=i64, device=device)
        self.seed_text = torch.zeros(batch, dtype=i64, device=device)
        self.seed_audio = torch.zeros(batch, dtype=i64, device=device)
        #: Steps this row has taken since its call joined (the hash counter).
        self.steps = torch.zeros(batch, dtype=i64, device=device)
        #: Last non-special text tokens per row, newest at ``hist_pos - 1`` (ring), -1 empty.
        self.history = torch.full((batch, MAX_REPETITION_CONTEXT), -1, dtype=i64, device=device)
        self.hist_pos = torch.zeros(batch, dtype=i64, device=device)
        self._special = torch.tensor(sorted(set(text_special_ids)), dtype=i64, device=device)
        self._ranks = torch.arange(MAX_TOPK, dtype=i64, device=device)
        self._rank_keys = (self._ranks * 0x9E3779B1) & _M32
        self._applied: list[CallSampling | None] = [None] * batch
        self._penalised = False  # any row with a repetition penalty != 1
        self._width_text = self._width_audio = MAX_TOPK
        self._exec = torch.zeros(batch, dtype=torch.bool, device=device)
        self._calls = 0
        self._text_token: torch.Tensor | None = None
        for i in range(batch):
            self.set_row(i, default.seeded())

    # ------------------------------------------------------------------ rows

    def set_row(self, row: int, sampling: CallSampling) -> None:
        """Give ``row`` a call's sampling (seeds must be set) and restart its counters."""
        if sampling.text_seed is None or sampling.audio_seed is None:
            raise ValueError("RowSampler.set_row needs a seeded CallSampling (use .seeded())")
        self.temp_text[row] = sampling.text_temperature
        self.temp_audio[row] = sampling.audio_temperature
        self.topk_text[row] = sampling.text_topk
        self.topk_audio[row] = sampling.audio_topk
        self.pad_mult[row] = sampling.pad_mult
        self.rep_penalty[row] = sampling.repetition_penalty
        self.rep_context[row] = sampling.repetition_penalty_context
        self.seed_text[row] = _seed_key(sampling.text_seed)
        self.seed_audio[row] = _seed_key(sampling.audio_seed)
        self.steps[row] = 0
        self.history[row] = -1
        self.hist_pos[row] = 0
        self._applied[row] = sampling
        self.refresh()

    def refresh(self) -> None:
        """Recompute what depends on every row's sampling (after rows were set, copied or
        restored)."""
        live = [s for s in self._applied if s is not None]
        self._penalised = any(s.repetition_penalty != 1.0 for s in live)
        # Top-k widths: the widest any row asks for. A row's draw does not depend on the
        # width (noise is keyed by rank, ranks past its k are masked), so this only saves
        # work. The audio draws run inside the CUDA-graphed depth transformer, whose shapes
        # must not change: there the width is the static MAX_TOPK.
        self._width_text = max(s.text_topk for s in live)
        self._width_audio = (MAX_TOPK if self.device.type == "cuda"
                             else max(s.audio_topk for s in live))

    def applied(self, row: int) -> CallSampling | None:
        return self._applied[row]

    # ------------------------------------------------------------------ stepping

    @contextlib.contextmanager
    def active(self, exec_mask: torch.Tensor) -> Iterator[None]:
        """Sample for ``LMGen.step`` calls made inside this block on this thread; then
        advance the executed rows' counters and record their text tokens."""
        self._exec.copy_(exec_mask)
        self._calls = 0
        self._text_token = None
        _active.sampler = self
        try:
            yield
        finally:
            _active.sampler = None
        self._advance()

    def _advance(self) -> None:
        ex = self._exec
        self.steps += ex.long()
        tok = self._text_token
        if tok is None or not self._penalised:
            return
        # The token after on_text_hook (steering writes into it in place): what was said.
        keep = ex & ~torch.isin(tok, self._special)
        rows = keep.nonzero().flatten()
        if rows.numel() == 0:
            return
        pos = self.hist_pos[rows] % MAX_REPETITION_CONTEXT
        self.history[rows, pos] = tok[rows]
        self.hist_pos[rows] += 1

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """``sample_token``'s contract: logits [B, 1, 1, C] -> tokens [B, 1, 1]."""
        call = self._calls
        self._calls += 1
        flat = logits.reshape(logits.shape[0], logits.shape[-1]).float()
        if call == 0:
            out = self._draw(self._text_logits(flat), self.temp_text, self.topk_text,
                             self.seed_text, 0, self._width_text)
            self._text_token = out
        else:
            out = self._draw(flat, self.temp_audio, self.topk_audio, self.seed_audio, call,
                             self._width_audio)
        return out.reshape(*logits.shape[:-1])

    def _text_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self._penalised:
            logits = self._penalise(logits)
        return logits

    def _penalise(self, logits: torch.Tensor) -> torch.Tensor:
        # Kyutai's Rust backend: each distinct token among the last `context` non-pad text
        # tokens has its logit divided (>= 0) or multiplied (< 0) by the penalty.
        n = MAX_REPETITION_CONTEXT
        age = (self.hist_pos[:, None] - 1 - torch.arange(n, device=self.device)[None, :]) % n
        valid = (self.history >= 0) & (age < self.rep_context[:, None])
        valid &= (torch.arange(n, device=self.device)[None, :] < self.hist_pos[:, None])
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen.scatter_(1, self.history.clamp(min=0), valid)
        p = self.rep_penalty[:, None]
        return torch.where(seen, torch.where(logits >= 0, logits / p, logits * p), logits)

    def _draw(self, logits: torch.Tensor, temp: torch.Tensor, topk: torch.Tensor,
              seed: torch.Tensor, stream: int, width: int) -> torch.Tensor:
        greedy = temp <= 0
        scaled = logits / torch.where(greedy, torch.ones_like(temp), temp)[:, None]
        if stream == 0:
            scaled = scaled.clone()
            scaled[:, self.text_pad_id] += self.pad_mult
        width = min(width, scaled.shape[-1])
        values, index = torch.topk(scaled, width, dim=-1)
        ranks = self._ranks[:width]
        values = values.masked_fill(ranks[None, :] >= topk[:, None], float("-inf"))
        row_key = _fmix32(seed ^ _fmix32((self.steps * _STREAMS + stream) & _M32))
        bits = _fmix32(row_key[:, None] ^ self._rank_keys[None, :width])
        u = ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))
        gumbel = -torch.log(-torch.log(u))
        choice = (values + gumbel).argmax(dim=-1, keepdim=True)
        sampled = index.gather(-1, choice)[:, 0]
        # Greedy rows: the same argmax as LMGen's use_sampling=False path.
        return torch.where(greedy, scaled.argmax(dim=-1), sampled)


def _seed_key(seed: int) -> int:
    """A 64-bit seed folded to the 32-bit hash key (both halves matter)."""
    lo, hi = seed & _M32, (seed >> 32) & _M32
    t = torch.tensor([lo, hi], dtype=torch.long)
    mixed = _fmix32(_fmix32(t[1:2]) ^ t[0:1])
    return int(mixed.item())

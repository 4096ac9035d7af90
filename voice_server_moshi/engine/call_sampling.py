"""Per-call sampling settings: what Kyutai's clients send, validated before a slot is taken.

Kyutai's web client sends ``text_temperature``, ``text_topk``, ``audio_temperature``,
``audio_topk``, ``pad_mult``, ``text_seed``, ``audio_seed``, ``repetition_penalty_context``
and ``repetition_penalty`` as query parameters of ``/api/chat``; Kyutai's Rust backend
applies them per session. This module holds them as one frozen value per call and checks
every value against a documented range, so a bad value is refused with a message that
names the key, before any engine work is done (ADR 0080).

Torch-free: the light install parses and validates settings too.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import VoiceServerMoshiError

__all__ = [
    "MAX_REPETITION_CONTEXT",
    "MAX_TOPK",
    "RANGES",
    "SAMPLING_KEYS",
    "CallSampling",
    "SamplingError",
    "parse_sampling_query",
]

#: Largest top-k a call may ask for. Static so the sampler's shapes never change (CUDA
#: graphs capture them); Kyutai's client offers 10..500.
MAX_TOPK = 500
#: Largest repetition-penalty window (non-pad text tokens); Kyutai's client offers 0..200.
MAX_REPETITION_CONTEXT = 256
_SEED_MAX = (1 << 64) - 1  # Kyutai's Rust backend takes u64 seeds


class SamplingError(VoiceServerMoshiError, ValueError):
    """A per-call sampling value is missing its type or out of its range."""


#: key -> (low, high) inclusive. Temperatures of 0 mean greedy (argmax) for that stream.
RANGES: dict[str, tuple[float, float]] = {
    "text_temperature": (0.0, 2.0),
    "text_topk": (1, MAX_TOPK),
    "audio_temperature": (0.0, 2.0),
    "audio_topk": (1, MAX_TOPK),
    "pad_mult": (-10.0, 10.0),
    "repetition_penalty_context": (0, MAX_REPETITION_CONTEXT),
    "repetition_penalty": (1.0, 3.0),
    "text_seed": (0, _SEED_MAX),
    "audio_seed": (0, _SEED_MAX),
}
_INT_KEYS = frozenset({"text_topk", "audio_topk", "repetition_penalty_context",
                       "text_seed", "audio_seed"})
SAMPLING_KEYS: tuple[str, ...] = tuple(RANGES)


@dataclass(frozen=True, slots=True)
class CallSampling:
    """How one call's text and audio tokens are drawn.

    Defaults are Kyutai's (``moshi`` package LMGen: text 0.7 / top-25, audio 0.8 / top-250;
    Rust backend: no pad bias, repetition penalty 1.0 over 64 tokens as its client sends).
    ``text_seed`` / ``audio_seed`` None means "draw one at random when the call starts"
    (what Kyutai's backend does); with both set, the same input gives the same output
    whatever else shares the batch.
    """

    text_temperature: float = 0.7
    text_topk: int = 25
    audio_temperature: float = 0.8
    audio_topk: int = 250
    #: Added to the text padding token's (temperature-scaled) logit: > 0 makes Moshi
    #: quieter, < 0 chattier (Rust backend: its probability times exp(pad_mult)).
    pad_mult: float = 0.0
    repetition_penalty_context: int = 64
    #: 1.0 is off. Logits of text tokens seen in the last ``repetition_penalty_context``
    #: non-pad tokens are divided (positive) or multiplied (negative) by it.
    repetition_penalty: float = 1.0
    text_seed: int | None = None
    audio_seed: int | None = None

    def __post_init__(self) -> None:
        problems = [p for f in fields(self) if (p := _check(f.name, getattr(self, f.name)))]
        if problems:
            raise SamplingError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.text_temperature == 0.0 and self.audio_temperature == 0.0

    def lmgen_params(self) -> dict[str, Any]:
        """As ``LMGen``'s engine-wide keyword arguments (``use_sampling=False``: greedy)."""
        return {"use_sampling": not self.greedy, "temp": self.audio_temperature,
                "temp_text": self.text_temperature, "top_k": self.audio_topk,
                "top_k_text": self.text_topk}

    def seeded(self) -> CallSampling:
        """This value with any missing seed drawn at random (done once per call)."""
        return replace(
            self,
            text_seed=secrets.randbits(63) if self.text_seed is None else self.text_seed,
            audio_seed=secrets.randbits(63) if self.audio_seed is None else self.audio_seed,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_engine_defaults(cls, use_sampling: bool, temp: float, temp_text: float,
                             top_k: int, top_k_text: int) -> CallSampling:
        """The per-call default from an engine-wide LMGen configuration."""
        if not use_sampling:
            return cls(text_temperature=0.0, audio_temperature=0.0,
                       text_topk=_clamp_topk(top_k_text), audio_topk=_clamp_topk(top_k))
        return cls(text_temperature=temp_text, audio_temperature=temp,
                   text_topk=_clamp_topk(top_k_text), audio_topk=_clamp_topk(top_k))


def _clamp_topk(k: int) -> int:
    # LMGen treats top_k <= 0 as "no top-k"; the per-row sampler has a static bound.
    return MAX_TOPK if k <= 0 else min(k, MAX_TOPK)


def _check(key: str, value: object) -> str | None:
    lo, hi = RANGES[key]
    if value is None and key in ("text_seed", "audio_seed"):
        return None
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{key} must be an integer in [{int(lo)}, {int(hi)}], got {value!r}"
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            float(value)):
        return f"{key} must be a number in [{lo:g}, {hi:g}], got {value!r}"
    if not lo <= value <= hi:
        shown = f"[{int(lo)}, {int(hi)}]" if key in _INT_KEYS else f"[{lo:g}, {hi:g}]"
        return f"{key} must be in {shown}, got {value!r}"
    return None


def parse_sampling_query(query: Mapping[str, str], defaults: CallSampling) -> CallSampling:
    """The call's sampling from URL query parameters over ``defaults``.

    Unknown keys are ignored (Kyutai's clients send others, e.g. ``email``); every bad value
    is reported at once in one :class:`SamplingError`.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key in SAMPLING_KEYS:
        raw = query.get(key)
        if raw is None:
            continue
        raw = raw.strip()
        try:
            values[key] = int(raw) if key in _INT_KEYS else float(raw)
        except ValueError:
            kind = "an integer" if key in _INT_KEYS else "a number"
            problems.append(f"{key} must be {kind}, got {raw!r}")
            continue
        if (p := _check(key, values[key])) is not None:
            problems.append(p)
    if problems:
        raise SamplingError("; ".join(problems))
    return replace(defaults, **values)


#: Greedy decoding, deterministic: what the equivalence tests and ``--greedy`` use.
GREEDY = CallSampling(text_temperature=0.0, audio_temperature=0.0)

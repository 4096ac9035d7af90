"""Personas (PersonaPlex, ADR 0130): what a call asks for, parsed and checked, torch-free.

A front door turns a request into a :class:`PersonaRequest` with
:func:`parse_persona_query` (NVIDIA's query parameters: ``text_prompt``, ``voice_prompt``,
``seed``), checks it against the loaded model with :func:`check_persona` before it takes a
slot (an unknown voice, or a persona sent to a checkpoint not trained for one, is refused
with a reason, never ignored), and hands ``request.prompt`` to the engine when it admits the
call. Everything here is pure: no torch, no model, so any front door can import it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import VoiceServerMoshiError

#: NVIDIA's tags around a persona (their server's ``wrap_with_system_tags``).
SYSTEM_TAG = "<system>"
#: Longest persona accepted, in characters (NVIDIA sets none; each token is one 80 ms
#: prefill step, so 4000 characters is already ~1000 steps).
MAX_PERSONA_CHARS = 4000
#: The voices NVIDIA ships in ``voices.tgz`` (their README's list).
NVIDIA_VOICES: tuple[str, ...] = (
    "NATF0", "NATF1", "NATF2", "NATF3", "NATM0", "NATM1", "NATM2", "NATM3",
    "VARF0", "VARF1", "VARF2", "VARF3", "VARF4", "VARM0", "VARM1", "VARM2", "VARM3", "VARM4",
)
#: What LiveKit's PersonaPlex plugin asks for when it is given nothing.
DEFAULT_VOICE = "NATF2"
#: File suffixes a voice prompt may have: pre-computed embeddings, or audio.
VOICE_SUFFIXES = (".pt", ".wav")


class PersonaError(VoiceServerMoshiError, ValueError):
    """A persona or voice that cannot be applied; the message is the reason to send back
    (a ``0x05`` error on the wire)."""


@dataclass(frozen=True, slots=True)
class PersonaPrompt:
    """What the agent is told before the call: ``text`` (the persona, already wrapped in
    ``<system>`` tags; None: none) and ``voice`` (a voice name in the model's voice
    directory, without suffix; None: the engine's default voice)."""

    text: str | None = None
    voice: str | None = None

    @property
    def empty(self) -> bool:
        return self.text is None and self.voice is None


@dataclass(frozen=True, slots=True)
class PersonaRequest:
    """A parsed request: the prompt (None: the call asked for none) and NVIDIA's ``seed``
    (None or -1: not seeded)."""

    prompt: PersonaPrompt | None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class PersonaSupport:
    """What the loaded model can take: ``family`` ``"personaplex"`` (persona and voice
    prompts) or ``"moshi"`` (none), its voices, the default voice and the checkpoint name
    (for messages and cache keys)."""

    family: str
    voices: frozenset[str] = frozenset()
    default_voice: str | None = None
    checkpoint: str = ""

    @property
    def prompts(self) -> bool:
        return self.family == "personaplex"

    def as_dict(self) -> dict[str, Any]:
        """The capability a front door advertises (``/capacity``'s ``persona``) and an
        ingress checks calls against: ``prompts``, ``family``, ``voices``,
        ``default_voice``, ``checkpoint``."""
        return {"prompts": self.prompts, "family": self.family,
                "voices": sorted(self.voices), "default_voice": self.default_voice,
                "checkpoint": self.checkpoint}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PersonaSupport:
        default = d.get("default_voice")
        return cls(str(d.get("family", "moshi")), frozenset(str(v) for v in d.get("voices", ())),
                   None if default is None else str(default), str(d.get("checkpoint", "")))


def wrap_system_tags(text: str) -> str:
    """``<system> text <system>`` unless already wrapped (NVIDIA's rule, stripped first)."""
    cleaned = text.strip()
    if cleaned.startswith(SYSTEM_TAG) and cleaned.endswith(SYSTEM_TAG):
        return cleaned
    return f"{SYSTEM_TAG} {cleaned} {SYSTEM_TAG}"


def voice_name(value: str) -> str:
    """A voice prompt parameter as a voice name: the basename only (a client cannot reach
    outside the voice directory), without a ``.pt``/``.wav`` suffix: ``NATF2.pt`` ->
    ``NATF2``. Raises :class:`PersonaError` for an empty or path-like value."""
    raw = value.strip()
    base = posixpath.basename(raw.replace("\\", "/"))
    for suffix in VOICE_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    if not base or base in (".", ".."):
        raise PersonaError(f"voice_prompt {value!r} names no voice (e.g. NATF2.pt)")
    return base


def make_prompt(persona: str | None, voice: str | None) -> PersonaPrompt | None:
    """A prompt from settings-style values (``persona`` raw text, ``voice`` a name or file
    name); None when both are empty."""
    text = None
    if persona is not None and persona.strip():
        if len(persona) > MAX_PERSONA_CHARS:
            raise PersonaError(
                f"persona is {len(persona)} characters; at most {MAX_PERSONA_CHARS}")
        text = wrap_system_tags(persona)
    name = voice_name(voice) if voice is not None and voice.strip() else None
    if text is None and name is None:
        return None
    return PersonaPrompt(text, name)


def parse_persona_query(query: Mapping[str, str]) -> PersonaRequest:
    """NVIDIA's query parameters as a request: ``text_prompt`` (wrapped in ``<system>``
    tags unless already; empty: none), ``voice_prompt`` (basename only, ``NATF2.pt`` ->
    ``NATF2``; empty: none) and ``seed`` (an integer; -1: none). Other parameters are left
    to the caller. Raises :class:`PersonaError` for a malformed value."""
    seed: int | None = None
    raw_seed = query.get("seed")
    if raw_seed is not None and raw_seed.strip():
        try:
            seed = int(raw_seed)
        except ValueError:
            raise PersonaError(f"seed must be an integer, got {raw_seed!r}") from None
        if seed == -1:
            seed = None
        elif not 0 <= seed < (1 << 64):
            raise PersonaError(f"seed must be in [0, 2**64) or -1, got {seed}")
    prompt = make_prompt(query.get("text_prompt"), query.get("voice_prompt"))
    return PersonaRequest(prompt, seed)


def persona_query(persona: str | None, voice: str | None, seed: int | None = None
                  ) -> dict[str, str]:
    """NVIDIA's query parameters for a persona, a voice and a seed (what their server and
    :func:`parse_persona_query` read): ``text_prompt`` as given (the server wraps it),
    ``voice_prompt`` as a file name (``NATF2`` -> ``NATF2.pt``; a file path -> its
    basename), ``seed``. Unset values are left out."""
    query: dict[str, str] = {}
    if persona is not None and persona.strip():
        query["text_prompt"] = persona.strip()
    if voice is not None and voice.strip():
        base = posixpath.basename(voice.strip().replace("\\", "/"))
        query["voice_prompt"] = base if base.lower().endswith(VOICE_SUFFIXES) else f"{base}.pt"
    if seed is not None:
        query["seed"] = str(seed)
    return query


def check_persona(prompt: PersonaPrompt | None, support: PersonaSupport) -> PersonaPrompt | None:
    """The prompt the engine will apply (the default voice filled in), or None for a call
    without one; raises :class:`PersonaError` with the reason when the model cannot take
    it. Call it before taking a slot."""
    if prompt is None or prompt.empty:
        return None
    if not support.prompts:
        what = "a persona" if prompt.text is not None else "a voice prompt"
        raise PersonaError(
            f"{what} was sent, but checkpoint {support.checkpoint or '(this one)'} is a "
            f"{support.family} model, not trained for persona or voice prompts: use a "
            "PersonaPlex checkpoint (e.g. nvidia/personaplex-7b-v1, or dev-personaplex)")
    voice = prompt.voice or support.default_voice
    if voice is None:
        raise PersonaError("no voice_prompt given and this engine has no default voice")
    if voice not in support.voices:
        known = ", ".join(sorted(support.voices)) or "(none)"
        raise PersonaError(f"unknown voice {voice!r}; this engine has: {known}")
    return PersonaPrompt(prompt.text, voice)

"""``serve``'s and ``cluster``'s persona flags (PersonaPlex, ADR 0130): the voice
directory, the prompt cache's bound, and the personas prefilled into the cache before the
first call. Torch-free: the cluster pickles what they give to its replicas."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .persona import PersonaError, PersonaPrompt, make_prompt

__all__ = ["add_persona_flags", "warm_prompts"]

#: A warm persona: (persona text as given, voice name or None for the default voice).
WarmPersona = tuple[str | None, str | None]


def add_persona_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voices", default=None, metavar="DIR",
                   help="PersonaPlex voice directory (NVIDIA's voices: NATF2.pt, ... or "
                   "audio .wav); default the checkpoint's own")
    p.add_argument("--warm-persona", action="append", default=[], metavar="TEXT",
                   help="prefill this persona (with the default voice) into the prompt "
                   "cache before serving, so its calls start at once; repeatable")
    p.add_argument("--warm-personas", default=None, metavar="FILE",
                   help="a JSON list of {\"persona\": TEXT, \"voice\": NAME} to prefill "
                   "before serving (either may be left out)")
    p.add_argument("--prompt-cache-bytes", type=int, default=2 << 30,
                   help="bound of the persona prompt cache in bytes (default 2 GiB; 0: none)")


def warm_personas_from_args(args: argparse.Namespace) -> tuple[WarmPersona, ...]:
    """The personas to warm: each ``--warm-persona``, then the file's. Raises ValueError
    with the reason for a file that cannot be read or a malformed entry."""
    out: list[WarmPersona] = [(text, None) for text in getattr(args, "warm_persona", [])]
    path = getattr(args, "warm_personas", None)
    if path:
        try:
            entries = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--warm-personas {path}: {exc}") from None
        if not isinstance(entries, list):
            raise ValueError(f"--warm-personas {path}: expected a JSON list of objects")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not all(
                    isinstance(e.get(k), str | None) for k in ("persona", "voice")):
                raise ValueError(f"--warm-personas {path}: entry {i} must be "
                                 "{\"persona\": string, \"voice\": string}")
            out.append((e.get("persona"), e.get("voice")))
    for text, voice in out:
        warm_prompts(((text, voice),))  # malformed ones fail before the model loads
    return tuple(out)


def warm_prompts(personas: tuple[WarmPersona, ...]) -> list[PersonaPrompt]:
    """The prompts to warm (empty entries dropped); PersonaError (a ValueError) says why
    one is malformed."""
    prompts = []
    for text, voice in personas:
        try:
            prompt = make_prompt(text, voice)
        except PersonaError as exc:
            raise ValueError(f"warm persona {text!r}: {exc}") from None
        if prompt is not None:
            prompts.append(prompt)
    return prompts
